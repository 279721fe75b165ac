"""The operator library as Python sees it: ops, TorchScript save/load in a fresh process, errors, meta."""
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import OPS_LIB

DTYPES = ["int8", "int4", "int4_fullrange", "int3", "int2", "nf4", "fp4_e2m1"]


class QLinear(torch.nn.Module):
    def __init__(self, weight, bias, dtype, group_size, sym):
        super().__init__()
        self.packed = torch.ops.lwq.quantize_weight(weight, dtype, group_size, sym)
        self.bias = torch.nn.Parameter(bias)

    def forward(self, x):
        return torch.ops.lwq.woq_linear(x, self.packed, self.bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size", [-1, 32, 48])
def test_woq_linear_equals_dequantized_matmul(lwq_ops, dtype, group_size):
    torch.manual_seed(0)
    w, b, x = torch.randn(19, 100), torch.randn(19), torch.randn(2, 7, 100)
    packed = lwq_ops.quantize_weight(w, dtype, group_size, True)
    deq = lwq_ops.dequantize_weight(packed)
    torch.testing.assert_close(lwq_ops.woq_linear(x, packed, b), x @ deq.T + b, rtol=1e-4, atol=1e-4)
    assert packed.out_features() == 19 and packed.in_features() == 100 and packed.dtype() == dtype


def test_pack_unpack_round_trip_with_act_order(lwq_ops):
    torch.manual_seed(1)
    q = torch.randint(0, 16, (9, 50), dtype=torch.int32)
    scales = torch.rand(9, 4) + 0.1
    zeros = torch.randint(0, 16, (9, 4), dtype=torch.int32)
    g_idx = (torch.randperm(50) // 16).to(torch.int32)
    packed = lwq_ops.pack_weight(q, scales, zeros, "int4", 16, g_idx)
    q2, s2, z2, g2 = lwq_ops.unpack_weight(packed)
    assert torch.equal(q2, q) and torch.equal(s2, scales) and torch.equal(z2, zeros) and torch.equal(g2, g_idx)
    expected = (q - zeros[:, g_idx.long()]).float() * scales[:, g_idx.long()]
    assert torch.equal(lwq_ops.dequantize_weight(packed), expected)
    x = torch.randn(3, 50)
    torch.testing.assert_close(lwq_ops.woq_linear(x, packed, None), x @ expected.T, rtol=1e-4, atol=1e-4)


def test_scripted_module_survives_save_and_load_in_a_fresh_process(lwq_ops, tmp_path):
    torch.manual_seed(2)
    model = torch.nn.Sequential(QLinear(torch.randn(24, 64), torch.randn(24), "int4", 32, False),
                                torch.nn.ReLU(),
                                QLinear(torch.randn(8, 24), torch.randn(8), "nf4", -1, True))
    scripted = torch.jit.script(model)
    x = torch.randn(5, 64)
    path, x_path, y_path = tmp_path / "q.pt", tmp_path / "x.pt", tmp_path / "y.pt"
    torch.jit.save(scripted, str(path))
    torch.save(x, str(x_path))
    torch.save(scripted(x), str(y_path))
    child = textwrap.dedent(f"""
        import torch
        torch.ops.load_library({str(OPS_LIB)!r})
        m = torch.jit.load({str(path)!r})
        y = m(torch.load({str(x_path)!r}))
        assert torch.equal(y, torch.load({str(y_path)!r})), "outputs differ after reload"
        print("same")
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "same"


def test_archive_without_the_library_fails_clearly(lwq_ops, tmp_path):
    torch.manual_seed(3)
    path = tmp_path / "q.pt"
    torch.jit.save(torch.jit.script(QLinear(torch.randn(4, 8), torch.randn(4), "int8", -1, True)), str(path))
    child = f"import torch; torch.jit.load({str(path)!r})"
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert out.returncode != 0
    assert "lwq" in out.stderr and "PackedWeight" in out.stderr


def test_meta_shapes(lwq_ops):
    packed = lwq_ops.quantize_weight(torch.randn(16, 40), "int4", 32, True)
    y = lwq_ops.woq_linear(torch.empty(2, 5, 40, device="meta"), packed, None)
    assert y.device.type == "meta" and y.shape == (2, 5, 16)
    y = lwq_ops.w8a8_linear(torch.empty(3, 40, device="meta"), packed, 0.1, 128, None)
    assert y.shape == (3, 16)


@pytest.mark.parametrize("call, message", [
    (lambda ops, w: ops.quantize_weight(w, "int5", 32, True), "unknown weight dtype 'int5'"),
    (lambda ops, w: ops.quantize_weight(w, "int4", 0, True), "group_size must be -1"),
    (lambda ops, w: ops.quantize_weight(w, "fp4_e2m1", 32, False), "symmetric table format"),
    (lambda ops, w: ops.quantize_weight(w.masked_fill(w > 2, float("nan")), "int4", 32, True), "NaN or Inf"),
    (lambda ops, w: ops.woq_linear(torch.randn(3, 31), ops.quantize_weight(w, "int4", 32, True), None),
     "[..., 64]"),
    (lambda ops, w: ops.pack_weight(torch.zeros(8, 64, dtype=torch.int32), torch.ones(8, 3), None, "int4", 32, None),
     "scales must have shape [8, 2]"),
])
def test_bad_input_errors_name_the_problem(lwq_ops, call, message):
    torch.manual_seed(4)
    with pytest.raises(RuntimeError) as err:
        call(lwq_ops, torch.randn(8, 64) * 2)
    assert message in str(err.value)


_ISA_OUTPUTS = r"""
import sys, torch
torch.ops.load_library(sys.argv[1])
torch.manual_seed(7)
out = {}
for dtype in ["int8", "int4", "int2", "int4_fullrange"]:
    for group in [-1, 32, 20]:
        for sym in [True] if dtype == "int4_fullrange" else [True, False]:
            for n, k, m in [(77, 384, 1), (136, 100, 5), (45, 300, 1), (24, 600, 13), (16, 512, 70)]:
                w, b = torch.randn(n, k), torch.randn(n)
                x = torch.randn(m, k)
                p = torch.ops.lwq.quantize_weight(w, dtype, group, sym)
                for threads in [1, 2]:
                    torch.set_num_threads(threads)
                    key = f"{dtype} g{group} sym{sym} {n}x{k} M{m} T{threads}"
                    out[key] = torch.ops.lwq.woq_linear(x, p, b)
                    if dtype in ("int8", "int4", "int4_fullrange"):
                        out[key + " a8"] = torch.ops.lwq.woq_linear_a8(x, p, b)
torch.save(out, sys.argv[2])
"""


def test_avx512_and_avx2_kernels_give_the_same_bits_through_the_ops(tmp_path):
    """The AVX-512 loops (decode row, blocked micro-kernel, a8 GEMV) against the AVX2 ones (LWQ_CPU=avx_vnni), through
    the ops at 1 and 2 threads: the same bits. On a CPU without AVX-512 both runs take the AVX2 path."""
    import os
    outs = []
    for env in ({}, {"LWQ_CPU": "avx_vnni"}):
        path = tmp_path / f"out{len(outs)}.pt"
        subprocess.run([sys.executable, "-c", _ISA_OUTPUTS, str(OPS_LIB), str(path)], check=True, timeout=300,
                       env={**os.environ, **env})
        outs.append(torch.load(path))
    assert outs[0].keys() == outs[1].keys() and len(outs[0]) == 7 * 3 * 5 * 2 + 5 * 3 * 5 * 2
    for key in outs[0]:
        assert torch.equal(outs[0][key], outs[1][key]), key
