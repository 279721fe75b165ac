#include "packed_weight.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <sstream>

#include "kernels/woq_a8.h"

namespace lwq {

namespace {

// Rows packed per step (a multiple of the tile height).
constexpr int64_t kPackRows = 32 * kernels::kTileN;

// Offset that turns a logical q into a stored code: signed int sym values are biased by 2^(bits-1).
int64_t code_offset(const DtypeInfo& info, bool sym) { return info.is_int() && sym ? kernels::sym_zero(info.bits) : 0; }

void check_int_tensor(const at::Tensor& t, const char* what) {
  TORCH_CHECK(!t.is_floating_point() && !t.is_complex() && t.scalar_type() != at::kBool, what,
              " must be an integer tensor, got ", t.scalar_type());
}

void check_range(const at::Tensor& t, int64_t lo, int64_t hi, const char* what) {
  if (t.numel() == 0) return;
  const int64_t mn = t.min().item<int64_t>(), mx = t.max().item<int64_t>();
  TORCH_CHECK(mn >= lo && mx <= hi, what, " must lie in [", lo, ", ", hi, "], got values in [", mn, ", ", mx, "]");
}

}  // namespace

c10::intrusive_ptr<PackedWeight> PackedWeight::pack(const at::Tensor& q, const at::Tensor& scales,
                                                    const c10::optional<at::Tensor>& zeros, const std::string& dtype,
                                                    int64_t group_size, const c10::optional<at::Tensor>& g_idx) {
  const DtypeInfo& info = dtype_info(dtype);
  const bool sym = !(zeros && zeros->defined());
  check_scheme(info, sym);
  TORCH_CHECK(q.dim() == 2 && q.size(0) > 0 && q.size(1) > 0, "q must be a non-empty [out, in] tensor, got shape ",
              q.sizes());
  check_int_tensor(q, "q");
  const int64_t n = q.size(0), k = q.size(1);
  const int64_t n_groups = group_count(group_size, k);
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == n && scales.size(1) == n_groups, "scales must have shape [",
              n, ", ", n_groups, "] for ", n, "x", k, " with group_size ", group_size, ", got ", scales.sizes());
  TORCH_CHECK(scales.is_floating_point(), "scales must be a float tensor, got ", scales.scalar_type());
  check_finite(scales, "scales");
  check_range(q, info.qmin(sym), info.qmax(sym), "q");

  auto w = c10::make_intrusive<PackedWeight>(Private{});
  w->set_geometry(info, n, k, group_size, sym);
  w->scales_ = scales.to(at::kFloat).t().contiguous();
  if (!sym) {
    TORCH_CHECK(zeros->sizes() == scales.sizes(), "zeros must have the shape of scales ", scales.sizes(), ", got ",
                zeros->sizes());
    check_int_tensor(*zeros, "zeros");
    check_range(*zeros, 0, info.qmax(false), "zeros");
    w->zeros_ = zeros->to(at::kByte).t().contiguous();
  }
  if (g_idx && g_idx->defined()) {
    TORCH_CHECK(g_idx->dim() == 1 && g_idx->size(0) == k, "g_idx must have shape [", k, "], got ", g_idx->sizes());
    check_int_tensor(*g_idx, "g_idx");
    check_range(*g_idx, 0, n_groups - 1, "g_idx");
    w->g_idx_ = g_idx->to(at::kInt).contiguous();
  }
  w->finish_init();
  // Row blocks of whole tiles: each block's packed bytes are one contiguous run of the layout, and the
  // temporaries stay a few MiB whatever the layer's size.
  w->qweight_ = at::empty({kernels::packed_bytes(n, k, info.bits)}, at::kByte);
  const int64_t offset = code_offset(info, sym);
  const int64_t tile_bytes = kernels::packed_bytes(kernels::kTileN, k, info.bits);
  at::parallel_for(0, (n + kPackRows - 1) / kPackRows, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t r0 = b0 * kPackRows; r0 < std::min(n, b1 * kPackRows); r0 += kPackRows) {
      const int64_t rows = std::min(kPackRows, n - r0);
      at::Tensor codes = (q.narrow(0, r0, rows).to(at::kInt) + offset).to(at::kByte);
      if (w->perm_.defined()) codes = codes.index_select(1, w->perm_);
      codes = codes.contiguous();
      kernels::pack_codes(codes.data_ptr<uint8_t>(), rows, k, info.bits,
                          w->qweight_.data_ptr<uint8_t>() + r0 / kernels::kTileN * tile_bytes);
    }
  });
  return w;
}

c10::intrusive_ptr<PackedWeight> PackedWeight::from_state(const State& s) {
  const int64_t version = std::get<0>(s);
  TORCH_CHECK(version == kStateVersion, "PackedWeight: serialized state version ", version,
              " is not supported by this build (it reads version ", kStateVersion, ")");
  const DtypeInfo& info = dtype_info(std::get<1>(s));
  const int64_t n = std::get<2>(s), k = std::get<3>(s), group_size = std::get<4>(s);
  const bool sym = std::get<5>(s);
  const at::Tensor& qweight = std::get<6>(s);
  const at::Tensor& scales = std::get<7>(s);
  const auto& zeros = std::get<8>(s);
  const auto& g_idx = std::get<9>(s);
  TORCH_CHECK(n > 0 && k > 0, "PackedWeight state: out/in features must be positive, got ", n, "x", k);
  // Before any value is read (the range and finiteness checks below).
  check_storage(qweight, "PackedWeight state: qweight");
  check_storage(scales, "PackedWeight state: scales");
  if (zeros && zeros->defined()) check_storage(*zeros, "PackedWeight state: zeros");
  if (g_idx && g_idx->defined()) check_storage(*g_idx, "PackedWeight state: g_idx");
  check_scheme(info, sym);
  const int64_t n_groups = group_count(group_size, k);
  TORCH_CHECK(sym == !(zeros && zeros->defined()), "PackedWeight state: sym=", sym, " but zeros are ",
              zeros && zeros->defined() ? "present" : "absent");
  const int64_t nbytes = kernels::packed_bytes(n, k, info.bits);
  TORCH_CHECK(qweight.scalar_type() == at::kByte && qweight.dim() == 1 && qweight.size(0) == nbytes,
              "PackedWeight state: qweight must be uint8 [", nbytes, "] for ", info.name, " ", n, "x", k, ", got ",
              qweight.scalar_type(), " ", qweight.sizes());
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.dim() == 2 && scales.size(0) == n_groups &&
                  scales.size(1) == n,
              "PackedWeight state: scales must be float32 [", n_groups, ", ", n, "], got ", scales.scalar_type(), " ",
              scales.sizes());
  check_finite(scales, "PackedWeight state: scales");

  auto w = c10::make_intrusive<PackedWeight>(Private{});
  w->set_geometry(info, n, k, group_size, sym);
  w->qweight_ = qweight.contiguous();
  w->scales_ = scales.contiguous();
  if (!sym) {
    TORCH_CHECK(zeros->scalar_type() == at::kByte && zeros->sizes() == scales.sizes(),
                "PackedWeight state: zeros must be uint8 ", scales.sizes(), ", got ", zeros->scalar_type(), " ",
                zeros->sizes());
    check_range(*zeros, 0, info.qmax(false), "PackedWeight state: zeros");
    w->zeros_ = zeros->contiguous();
  }
  if (g_idx && g_idx->defined()) {
    TORCH_CHECK(g_idx->scalar_type() == at::kInt && g_idx->dim() == 1 && g_idx->size(0) == k,
                "PackedWeight state: g_idx must be int32 [", k, "], got ", g_idx->scalar_type(), " ", g_idx->sizes());
    check_range(*g_idx, 0, n_groups - 1, "PackedWeight state: g_idx");
    w->g_idx_ = g_idx->contiguous();
  }
  w->finish_init();
  return w;
}

void PackedWeight::set_geometry(const DtypeInfo& info, int64_t n, int64_t k, int64_t group_size, bool sym) {
  info_ = &info;
  n_ = n;
  k_ = k;
  group_size_ = group_size;
  n_groups_ = group_count(group_size, k);
  sym_ = sym;
}

void PackedWeight::finish_init() {
  const int64_t n_pad = kernels::padded_rows(n_);
  const int64_t k_pad = kernels::padded_cols(k_, info_->bits);
  const int64_t g = effective_group_size(group_size_, k_);
  // The kernels read [n_groups, N_pad]; without padding rows that is the serialized tensor itself (no copy, so
  // a spilled weight keeps its scales in the spill file).
  auto padded = [&](const at::Tensor& t) {
    if (n_pad == n_) return t;
    at::Tensor p = at::zeros({n_groups_, n_pad}, t.options());
    p.narrow(1, 0, n_).copy_(t);
    return p;
  };
  scales_pad_ = padded(scales_);
  if (zeros_.defined()) zeros_pad_ = padded(zeros_);
  at::Tensor groups;  // group of each internal column
  if (g_idx_.defined()) {
    // Internal order sorts columns by group (stable), so each group is one contiguous run for the kernels.
    auto sorted = g_idx_.to(at::kLong).sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
    groups = std::get<0>(sorted);
    perm_ = std::get<1>(sorted);
  } else {
    groups = at::arange(k_, at::kLong).div(g, "floor");
  }
  uniform_group_ = groups.equal(at::arange(k_, at::kLong).div(g, "floor")) ? g : 0;
  col_group_ = at::cat({groups, groups[k_ - 1].expand({k_pad - k_})}).to(at::kInt).contiguous();
}

at::Tensor PackedWeight::q_rows(int64_t row_begin, int64_t row_end) const {
  TORCH_CHECK(row_begin >= 0 && row_begin <= row_end && row_end <= n_ && row_begin % kernels::kTileN == 0,
              "PackedWeight: row range [", row_begin, ", ", row_end, ") must lie in [0, ", n_,
              "] and start at a multiple of ", kernels::kTileN);
  const int64_t rows = row_end - row_begin;
  at::Tensor codes = at::empty({rows, k_}, at::kByte);
  const int64_t tile_bytes = kernels::packed_bytes(kernels::kTileN, k_, info_->bits);
  kernels::unpack_codes(qweight_.data_ptr<uint8_t>() + row_begin / kernels::kTileN * tile_bytes, rows, k_,
                        info_->bits, codes.data_ptr<uint8_t>());
  at::Tensor q = codes.to(at::kInt) - static_cast<int32_t>(code_offset(*info_, sym_));
  if (perm_.defined()) q = at::empty_like(q).index_copy_(1, perm_, q);  // back to the original column order
  return q;
}

std::tuple<at::Tensor, at::Tensor, c10::optional<at::Tensor>, c10::optional<at::Tensor>> PackedWeight::unpack() const {
  c10::optional<at::Tensor> zeros, g_idx;
  if (zeros_.defined()) zeros = zeros_.t().to(at::kInt).contiguous();
  if (g_idx_.defined()) g_idx = g_idx_.clone();
  return {q_rows(0, n_), scales_.t().contiguous(), zeros, g_idx};
}

at::Tensor PackedWeight::dequantize(int64_t row_begin, int64_t row_end) const {
  const at::Tensor q = q_rows(row_begin, row_end);
  const int64_t rows = row_end - row_begin;
  const at::Tensor col_group = g_idx_.defined() ? g_idx_.to(at::kLong)
                                                : at::arange(k_, at::kLong).div(group_size_ == -1 ? k_ : group_size_,
                                                                                "floor");
  // One row per weight element, with its own scale (and zero): the same arithmetic as the kernels' reference.
  const at::Tensor s = scales_.narrow(1, row_begin, rows).t().index_select(1, col_group).reshape({-1});
  const at::Tensor z = zeros_.defined()
                           ? zeros_.narrow(1, row_begin, rows).t().to(at::kInt).index_select(1, col_group).reshape({-1})
                           : at::Tensor();
  return dequantize_rows(q.reshape({-1, 1}), s, z, *info_, sym_).view({rows, k_});
}

at::Tensor PackedWeight::dequantize() const {
  // In row blocks, so that the temporaries (several times the block in int32 and fp32) stay small.
  at::Tensor out = at::empty({n_, k_}, at::kFloat);
  at::parallel_for(0, (n_ + kPackRows - 1) / kPackRows, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t r0 = b0 * kPackRows; r0 < std::min(n_, b1 * kPackRows); r0 += kPackRows) {
      const int64_t rows = std::min(kPackRows, n_ - r0);
      out.narrow(0, r0, rows).copy_(dequantize(r0, r0 + rows));
    }
  });
  return out;
}

PackedWeight::State PackedWeight::state() const {
  return State(kStateVersion, info_->name, n_, k_, group_size_, sym_, qweight_, scales_,
               zeros_.defined() ? c10::optional<at::Tensor>(zeros_) : c10::nullopt,
               g_idx_.defined() ? c10::optional<at::Tensor>(g_idx_) : c10::nullopt);
}

int64_t PackedWeight::nbytes() const {
  int64_t b = qweight_.numel() + scales_.numel() * 4;
  if (zeros_.defined()) b += zeros_.numel();
  if (g_idx_.defined()) b += g_idx_.numel() * 4;
  return b;
}

kernels::WeightView PackedWeight::view() const {
  kernels::WeightView v;
  v.qweight = qweight_.data_ptr<uint8_t>();
  v.scales = scales_pad_.data_ptr<float>();
  v.zeros = zeros_pad_.defined() ? zeros_pad_.data_ptr<uint8_t>() : nullptr;
  v.col_group = col_group_.data_ptr<int32_t>();
  v.N = n_;
  v.K = k_;
  v.N_pad = kernels::padded_rows(n_);
  v.K_pad = kernels::padded_cols(k_, info_->bits);
  v.n_groups = n_groups_;
  v.uniform_group = uniform_group_;
  v.bits = info_->bits;
  v.codebook = info_->codebook;
  return v;
}

bool PackedWeight::supports_int8_activations() const { return kernels::woq_a8_supported(view()); }

std::string PackedWeight::repr() const {
  std::ostringstream os;
  os << "PackedWeight(dtype=" << info_->name << ", sym=" << (sym_ ? "True" : "False") << ", out_features=" << n_
     << ", in_features=" << k_ << ", group_size=" << group_size_ << ", act_order=" << (g_idx_.defined() ? "True" : "False")
     << ", nbytes=" << nbytes() << ")";
  return os.str();
}

}  // namespace lwq
