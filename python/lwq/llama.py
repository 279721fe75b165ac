"""The decoder model of lwq's exported TorchScript contract (docs/model-contract.md), in plain PyTorch, plus greedy
decoding and NLL helpers.

One definition serves the exporter (lwq.export scripts it with meta parameters), the demo (real weights, Linears
swapped for packed lwq ops) and the tests. The Hugging Face families lwq exports (llama, mistral, qwen2, gemma2,
phi3) are this one model with switches (LlamaConfig's family fields: rotary style, q/k/v biases, fused projections,
norm offset, activation, embedding scale, soft-caps, per-layer sliding windows, sandwich norms); their defaults are
the llama2.c Llama.

Two layouts of names, both Hugging Face's module names so that the default `lwq quantize` exclusion of `lm_head`
keeps the head float:
  llama2c  LlamaModel: embed_tokens, layers.N.self_attn.q_proj, ..., norm, lm_head at the root; rotary on adjacent
           pairs (2i, 2i+1) as llama2.c (hf_to_adjacent_pairs converts a Hugging Face q/k to it).
  hf       CausalLM: model.embed_tokens, model.layers.N..., model.norm, lm_head, the checkpoint's own names and
           values; rotary on halves (x_j with x_{j + hd/2}) as Hugging Face.

Interface (all scripted, fp32 compute):
  forward(input_ids [B, L]) -> logits [B, L, V]
  init_cache(batch, max_len) -> 2 * n_layers zero tensors [B, n_kv_heads, max_len, head_dim] (k, v per layer)
  forward_cached(input_ids [B, T], start_pos, cache) -> logits [B, T, V], writing keys/values into cache in place

Only torch and the standard library are needed; run with /usr/bin/python3 (Debian's python3-torch).
"""

import math
import zlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

BOS = 1
EOS = 2

# Parameter names inside block i, with their shapes as functions of the config.
BLOCK_LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]

ACTIVATIONS = ("silu", "gelu_tanh")
ROPE_STYLES = ("adjacent", "half")
LAYOUTS = ("llama2c", "hf")
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")

# The family fields and their llama2.c values: config.json carries one only when it differs, so that a llama2.c
# export's config is what it was before the families existed.
FAMILY_DEFAULTS: Dict[str, Any] = dict(
    layout="llama2c", rope_style="adjacent", qkv_bias=False, fused_qkv=False, fused_gate_up=False,
    norm_unit_offset=False, activation="silu", embed_scale=False, embed_dtype="float32",
    query_pre_attn_scalar=0.0, attn_softcap=0.0, final_softcap=0.0, sliding_windows=None, sandwich_norms=False)


@dataclass
class LlamaConfig:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    max_seq_len: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tied_embeddings: bool = True
    head_dim: int = 0  # 0: dim // n_heads
    # Hugging Face's rope_scaling dict ({"rope_type": "llama3" | "linear", ...}) or None.
    rope_scaling: Optional[Dict[str, Any]] = field(default=None)
    # Family switches (FAMILY_DEFAULTS: the llama2.c Llama).
    layout: str = "llama2c"          # names: see the module docstring
    rope_style: str = "adjacent"     # adjacent pairs (llama2.c) or halves (Hugging Face)
    qkv_bias: bool = False           # q/k/v projections with biases (qwen2)
    fused_qkv: bool = False          # one self_attn.qkv_proj [q; k; v] (phi3)
    fused_gate_up: bool = False      # one mlp.gate_up_proj [gate; up] (phi3)
    norm_unit_offset: bool = False   # RMSNorm multiplies by (1 + weight) (gemma2)
    activation: str = "silu"         # of the gate: silu or gelu_tanh (GELU, tanh approximation)
    embed_scale: bool = False        # embeddings times sqrt(dim) rounded to embed_dtype (gemma2)
    embed_dtype: str = "float32"     # the dtype Hugging Face computes in, which rounds sqrt(dim)
    query_pre_attn_scalar: float = 0.0  # scores scaled by its -1/2 power; 0: head_dim ** -0.5
    attn_softcap: float = 0.0        # scores -> cap * tanh(scores / cap) before the mask; 0: none
    final_softcap: float = 0.0       # the same on the logits
    sliding_windows: Optional[List[int]] = None  # per layer: a query sees the last w positions; 0 or None: all
    sandwich_norms: bool = False     # gemma2: norms after attention and MLP, and pre_feedforward_layernorm

    def __post_init__(self) -> None:
        if self.head_dim == 0 and self.n_heads > 0:
            self.head_dim = self.dim // self.n_heads

    def validate(self, what: str) -> None:
        """Raises ValueError naming `what` (the file or preset) when the shape cannot be a Llama of this model."""
        sizes = dict(dim=self.dim, hidden_dim=self.hidden_dim, n_layers=self.n_layers, n_heads=self.n_heads,
                     n_kv_heads=self.n_kv_heads, vocab_size=self.vocab_size, max_seq_len=self.max_seq_len,
                     head_dim=self.head_dim)
        bad = {k: v for k, v in sizes.items() if v <= 0}
        if bad:
            raise ValueError(f"{what}: sizes must be positive, got {bad}")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"{what}: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2 != 0:
            raise ValueError(f"{what}: head_dim {self.head_dim} is odd, rotary embeddings rotate pairs")
        if not self.norm_eps > 0 or not self.rope_theta > 0:
            raise ValueError(f"{what}: norm_eps {self.norm_eps} and rope_theta {self.rope_theta} must be positive")
        for name, value, allowed in (("layout", self.layout, LAYOUTS), ("rope_style", self.rope_style, ROPE_STYLES),
                                     ("activation", self.activation, ACTIVATIONS),
                                     ("embed_dtype", self.embed_dtype, COMPUTE_DTYPES)):
            if value not in allowed:
                raise ValueError(f"{what}: {name} {value!r} is not one of {', '.join(allowed)}")
        if self.sliding_windows is not None and (len(self.sliding_windows) != self.n_layers
                                                 or any(w < 0 for w in self.sliding_windows)):
            raise ValueError(f"{what}: sliding_windows must be {self.n_layers} non-negative sizes, got "
                             f"{self.sliding_windows}")
        if min(self.query_pre_attn_scalar, self.attn_softcap, self.final_softcap) < 0:
            raise ValueError(f"{what}: query_pre_attn_scalar and the soft-caps must be positive or 0 (none)")

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def prefix(self) -> str:
        """Where the decoder's modules are: "model." in the hf layout."""
        return "model." if self.layout == "hf" else ""

    def window(self, layer: int) -> int:
        return self.sliding_windows[layer] if self.sliding_windows else 0

    def block_shapes(self) -> List[Tuple[str, Tuple[int, ...]]]:
        """The parameters of one block as (name within the block, shape), in the checkpoint's order."""
        d, h = self.dim, self.hidden_dim
        out: List[Tuple[str, Tuple[int, ...]]] = [("input_layernorm.weight", (d,))]
        if self.fused_qkv:
            out.append(("self_attn.qkv_proj.weight", (self.q_dim + 2 * self.kv_dim, d)))
        else:
            for name, rows in (("q_proj", self.q_dim), ("k_proj", self.kv_dim), ("v_proj", self.kv_dim)):
                out.append((f"self_attn.{name}.weight", (rows, d)))
                if self.qkv_bias:
                    out.append((f"self_attn.{name}.bias", (rows,)))
        out += [("self_attn.o_proj.weight", (d, self.q_dim)), ("post_attention_layernorm.weight", (d,))]
        if self.sandwich_norms:
            out.append(("pre_feedforward_layernorm.weight", (d,)))
        if self.fused_gate_up:
            out.append(("mlp.gate_up_proj.weight", (2 * h, d)))
        else:
            out += [("mlp.gate_proj.weight", (h, d)), ("mlp.up_proj.weight", (h, d))]
        out.append(("mlp.down_proj.weight", (d, h)))
        if self.sandwich_norms:
            out.append(("post_feedforward_layernorm.weight", (d,)))
        return out

    def parameter_shapes(self) -> List[Tuple[str, Tuple[int, ...]]]:
        """Every parameter of the model as (qualified name, shape), block by block (the order export writes)."""
        p, d = self.prefix, self.dim
        out: List[Tuple[str, Tuple[int, ...]]] = [(f"{p}embed_tokens.weight", (self.vocab_size, d))]
        block = self.block_shapes()
        for i in range(self.n_layers):
            out += [(f"{p}layers.{i}.{name}", shape) for name, shape in block]
        out += [(f"{p}norm.weight", (d,)), ("lm_head.weight", (self.vocab_size, d))]
        return out

    def parameter_count(self) -> int:
        return sum(math.prod(shape) for _, shape in self.parameter_shapes())

    def to_json(self) -> Dict[str, Any]:
        """The model fields of the exported config.json (lwq.export writes the rest)."""
        out: Dict[str, Any] = {"architecture": "llama"}
        out.update({k: v for k, v in asdict(self).items()
                    if k not in FAMILY_DEFAULTS or v != FAMILY_DEFAULTS[k]})
        return out

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "LlamaConfig":
        names = [f.name for f in fields(cls)]
        return cls(**{k: data[k] for k in names if k in data})


# ----------------------------------------------------------------------------------------------------------------
# Rotary embedding


def rope_frequencies(cfg: LlamaConfig) -> torch.Tensor:
    """Rotation frequency of each pair [head_dim / 2] (float64), with Hugging Face's rope_scaling applied."""
    hd = cfg.head_dim
    freqs = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    scaling = cfg.rope_scaling
    if not scaling:
        return freqs
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = float(scaling["factor"])
    if kind == "linear":  # positions divided by factor
        return freqs / factor
    if kind == "llama3":
        # Llama 3.1+: wavelengths beyond the original context are stretched by `factor`, short ones kept, and the
        # band in between interpolated.
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / freqs
        smooth = ((old_len / wavelen - low) / (high - low)).clamp(0.0, 1.0)
        return (1 - smooth) * freqs / factor + smooth * freqs
    raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: linear, llama3)")


def rotary_tables(cfg: LlamaConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [max_seq_len, head_dim / 2] (fp32) for rotating adjacent pairs (x[2i], x[2i+1]) of each head."""
    angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float64), rope_frequencies(cfg))
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, hd]; cos/sin [T, hd/2]. Rotates each adjacent pair by its position's angle."""
    pairs = x.reshape(x.shape[0], x.shape[1], x.shape[2], -1, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(3)


def apply_rotary_halves(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, hd]; cos/sin [T, hd/2]. Hugging Face's rotate_half: element j is rotated with j + hd/2."""
    half = x.shape[-1] // 2
    x0, x1 = x[..., :half], x[..., half:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1)


def hf_to_adjacent_pairs(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a Hugging Face q/k projection [n_heads * hd, in] reordered for adjacent-pair rotary: HF rotates
    element j with j + hd/2 within each head, llama2.c rotates 2i with 2i+1, so HF row j (< hd/2) becomes row 2j and
    row j + hd/2 becomes row 2j + 1."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def adjacent_pairs_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of hf_to_adjacent_pairs (what Hugging Face's Llama conversion script applies)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


# ----------------------------------------------------------------------------------------------------------------
# Model


class RMSNorm(nn.Module):
    unit_offset: torch.jit.Final[bool]

    def __init__(self, dim: int, eps: float, device: Optional[str] = None, unit_offset: bool = False):
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.ones(dim, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        # A constant: the llama graph keeps the bare product that scale folding recognises.
        if self.unit_offset:
            return normed * (1.0 + self.weight.float())
        return normed * self.weight.float()


class Attention(nn.Module):
    fused: torch.jit.Final[bool]
    rotate_half: torch.jit.Final[bool]
    softcap: torch.jit.Final[float]
    window: torch.jit.Final[int]

    def __init__(self, cfg: LlamaConfig, window: int = 0, device: Optional[str] = None):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.head_dim
        self.scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
        self.fused = cfg.fused_qkv
        self.rotate_half = cfg.rope_style == "half"
        self.softcap = cfg.attn_softcap
        self.window = window
        if cfg.fused_qkv:
            self.qkv_proj = nn.Linear(cfg.dim, cfg.q_dim + 2 * cfg.kv_dim, bias=False, device=device)
        else:
            self.q_proj = nn.Linear(cfg.dim, cfg.q_dim, bias=cfg.qkv_bias, device=device)
            self.k_proj = nn.Linear(cfg.dim, cfg.kv_dim, bias=cfg.qkv_bias, device=device)
            self.v_proj = nn.Linear(cfg.dim, cfg.kv_dim, bias=cfg.qkv_bias, device=device)
        self.o_proj = nn.Linear(cfg.q_dim, cfg.dim, bias=False, device=device)

    def rotary(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.rotate_half:
            return apply_rotary_halves(x, cos, sin)
        return apply_rotary(x, cos, sin)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, T, H, hd], and k, v [B, KV, T, hd] (the cache layout), rotary applied to q and k."""
        B, T = x.shape[0], x.shape[1]
        if self.fused:
            q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            qkv = self.qkv_proj(x)
            q, k, v = qkv[..., :q_dim], qkv[..., q_dim:q_dim + kv_dim], qkv[..., q_dim + kv_dim:]
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = self.rotary(q.reshape(B, T, self.n_heads, self.head_dim), cos, sin)
        k = self.rotary(k.reshape(B, T, self.n_kv_heads, self.head_dim), cos, sin)
        v = v.reshape(B, T, self.n_kv_heads, self.head_dim)
        return q, k.transpose(1, 2), v.transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int) -> torch.Tensor:
        """q [B, T, H, hd] at positions start_pos.., k/v [B, KV, S, hd] at positions 0..S-1 -> [B, T, H * hd]."""
        B, T = q.shape[0], q.shape[1]
        S = k.shape[2]
        # Grouped-query attention without copying k/v: query head h = g * rep + r reads key/value head g, so the rep
        # query heads of a group are rows of one [rep * T, hd] matrix against the group's k/v. (Broadcasting k over
        # a rep dimension instead made matmul materialise rep copies of the whole cache slice at every step: 17 %
        # of a decode step's time on a 7B shape at 2 threads.)
        rep = self.n_heads // self.n_kv_heads
        qg = q.view(B, T, self.n_kv_heads, rep, self.head_dim).permute(0, 2, 3, 1, 4)  # [B, KV, rep, T, hd]
        qg = qg.reshape(B, self.n_kv_heads, rep * T, self.head_dim)
        scores = torch.matmul(qg, k.transpose(2, 3)).view(B, self.n_kv_heads, rep, T, S) * self.scale
        if self.softcap > 0:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        if self.window > 0:
            # Query t sits at position start_pos + t and sees keys start_pos + t - window + 1 .. start_pos + t.
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(start_pos).triu(start_pos - self.window + 1)
            scores = scores.masked_fill(~mask, float("-inf"))
        elif T > 1:
            # Query t sits at position start_pos + t and sees keys 0..start_pos + t.
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(start_pos)
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = F.softmax(scores, dim=-1).view(B, self.n_kv_heads, rep * T, S)
        out = torch.matmul(probs, v).view(B, self.n_kv_heads, rep, T, self.head_dim)  # [B, KV, rep, T, hd]
        return out.permute(0, 3, 1, 2, 4).reshape(B, T, self.n_heads * self.head_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x, cos, sin)
        return self.o_proj(self.attend(q, k, v, 0))

    def forward_cached(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                       v_cache: torch.Tensor, start_pos: int) -> torch.Tensor:
        q, k, v = self.project(x, cos, sin)
        end = start_pos + x.shape[1]
        k_cache[:, :, start_pos:end] = k
        v_cache[:, :, start_pos:end] = v
        return self.o_proj(self.attend(q, k_cache[:, :, :end], v_cache[:, :, :end], start_pos))


class MLP(nn.Module):
    fused: torch.jit.Final[bool]
    gelu: torch.jit.Final[bool]

    def __init__(self, cfg: LlamaConfig, device: Optional[str] = None):
        super().__init__()
        self.fused = cfg.fused_gate_up
        self.gelu = cfg.activation == "gelu_tanh"
        if cfg.fused_gate_up:
            self.gate_up_proj = nn.Linear(cfg.dim, 2 * cfg.hidden_dim, bias=False, device=device)
        else:
            self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False, device=device)
            self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False, device=device)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False, device=device)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        if self.gelu:
            return F.gelu(x, approximate="tanh")
        return F.silu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(up * self.act(gate))
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """forward(hidden, cos, sin) -> hidden: the calibration engine chains blocks through the first argument."""

    sandwich: torch.jit.Final[bool]

    def __init__(self, cfg: LlamaConfig, window: int = 0, device: Optional[str] = None):
        super().__init__()
        offset = cfg.norm_unit_offset
        self.sandwich = cfg.sandwich_norms
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps, device, offset)
        self.self_attn = Attention(cfg, window, device)
        # Llama: the norm before the MLP. Sandwich (gemma2): the norm of the attention's output, and
        # pre_feedforward_layernorm before the MLP.
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps, device, offset)
        if cfg.sandwich_norms:
            self.pre_feedforward_layernorm = RMSNorm(cfg.dim, cfg.norm_eps, device, offset)
        self.mlp = MLP(cfg, device)
        if cfg.sandwich_norms:
            self.post_feedforward_layernorm = RMSNorm(cfg.dim, cfg.norm_eps, device, offset)

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.sandwich:
            return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))
        return h + self.mlp(self.post_attention_layernorm(h))

    def residual_attention(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        if self.sandwich:
            return x + self.post_attention_layernorm(attended)
        return x + attended

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = self.residual_attention(x, self.self_attn(self.input_layernorm(x), cos, sin))
        return self.feed_forward(h)

    @torch.jit.export
    def forward_cached(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                       v_cache: torch.Tensor, start_pos: int) -> torch.Tensor:
        attended = self.self_attn.forward_cached(self.input_layernorm(x), cos, sin, k_cache, v_cache, start_pos)
        return self.feed_forward(self.residual_attention(x, attended))


class Decoder(nn.Module):
    """Embedding, blocks and final norm: tokens -> normalised hidden states. LlamaModel (the llama2c layout) is one
    with its head; CausalLM (the hf layout) holds one as `model`."""

    scale_embedding: torch.jit.Final[bool]

    def __init__(self, cfg: LlamaConfig, device: Optional[str] = None):
        super().__init__()
        cfg.validate(type(self).__name__)
        self.vocab_size = cfg.vocab_size
        self.max_seq_len = cfg.max_seq_len
        self.n_layers = cfg.n_layers
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.head_dim
        self.scale_embedding = cfg.embed_scale
        # Hugging Face multiplies by sqrt(dim) as a tensor of the compute dtype (60.0 for 3584 in bf16).
        self.embed_multiplier = float(torch.tensor(math.sqrt(cfg.dim), dtype=getattr(torch, cfg.embed_dtype)))
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim, device=device)
        self.layers = nn.ModuleList([Block(cfg, cfg.window(i), device) for i in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps, device, cfg.norm_unit_offset)
        cos, sin = rotary_tables(cfg)
        # Not in the state dict (they are not weights), but saved in the TorchScript archive.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(input_ids)
        if self.scale_embedding:
            return h * self.embed_multiplier
        return h

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        if T > self.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds the model's max_seq_len {self.max_seq_len}")
        cos = self.rope_cos[:T]
        sin = self.rope_sin[:T]
        h = self.embed(input_ids)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.norm(h)

    @torch.jit.export
    def init_cache(self, batch: int, max_len: int) -> List[torch.Tensor]:
        """Zero key and value caches [batch, n_kv_heads, max_len, head_dim] for every layer: k0, v0, k1, v1, ..."""
        cache: List[torch.Tensor] = []
        for _ in range(2 * self.n_layers):
            cache.append(torch.zeros(batch, self.n_kv_heads, max_len, self.head_dim, device=self.rope_cos.device))
        return cache

    def hidden_cached(self, input_ids: torch.Tensor, start_pos: int, cache: List[torch.Tensor]) -> torch.Tensor:
        T = input_ids.shape[1]
        end = start_pos + T
        if len(cache) != 2 * self.n_layers:
            raise ValueError(f"cache has {len(cache)} tensors, expected 2 * n_layers = {2 * self.n_layers}")
        if start_pos < 0 or end > cache[0].shape[2] or end > self.max_seq_len:
            raise ValueError(f"positions {start_pos}..{end - 1} do not fit the cache of {cache[0].shape[2]} "
                             f"positions and max_seq_len {self.max_seq_len}")
        cos = self.rope_cos[start_pos:end]
        sin = self.rope_sin[start_pos:end]
        h = self.embed(input_ids)
        for i, layer in enumerate(self.layers):
            h = layer.forward_cached(h, cos, sin, cache[2 * i], cache[2 * i + 1], start_pos)
        return self.norm(h)


def soft_cap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(logits / cap) * cap


class LlamaModel(Decoder):
    """The contract's root module in the llama2c layout (names at the root). device="meta" builds it with empty
    parameters (the exported archive); the rotary tables are real buffers either way."""

    final_softcap: torch.jit.Final[float]

    def __init__(self, cfg: LlamaConfig, device: Optional[str] = None):
        if cfg.layout != "llama2c":
            raise ValueError(f"LlamaModel is the llama2c layout, the config's is {cfg.layout!r} (use build_model)")
        super().__init__(cfg, device)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False, device=device)
        self.final_softcap = cfg.final_softcap

    def head(self, h: torch.Tensor) -> torch.Tensor:
        if self.final_softcap > 0:
            return soft_cap(self.lm_head(h), self.final_softcap)
        return self.lm_head(h)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(input_ids))

    @torch.jit.export
    def forward_cached(self, input_ids: torch.Tensor, start_pos: int, cache: List[torch.Tensor]) -> torch.Tensor:
        return self.head(self.hidden_cached(input_ids, start_pos, cache))


class CausalLM(nn.Module):
    """The contract's root module in the hf layout: the decoder as `model`, the head as `lm_head`, as Hugging Face's
    *ForCausalLM. Carries max_seq_len, vocab_size, n_layers like LlamaModel (the tool reads max_seq_len)."""

    final_softcap: torch.jit.Final[float]

    def __init__(self, cfg: LlamaConfig, device: Optional[str] = None):
        super().__init__()
        if cfg.layout != "hf":
            raise ValueError(f"CausalLM is the hf layout, the config's is {cfg.layout!r} (use build_model)")
        self.vocab_size = cfg.vocab_size
        self.max_seq_len = cfg.max_seq_len
        self.n_layers = cfg.n_layers
        self.model = Decoder(cfg, device)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False, device=device)
        self.final_softcap = cfg.final_softcap

    def head(self, h: torch.Tensor) -> torch.Tensor:
        if self.final_softcap > 0:
            return soft_cap(self.lm_head(h), self.final_softcap)
        return self.lm_head(h)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.model.hidden(input_ids))

    @torch.jit.export
    def init_cache(self, batch: int, max_len: int) -> List[torch.Tensor]:
        return self.model.init_cache(batch, max_len)

    @torch.jit.export
    def forward_cached(self, input_ids: torch.Tensor, start_pos: int, cache: List[torch.Tensor]) -> torch.Tensor:
        return self.head(self.model.hidden_cached(input_ids, start_pos, cache))


def build_model(cfg: LlamaConfig, device: Optional[str] = None) -> nn.Module:
    """The root module of cfg's layout: LlamaModel (llama2c) or CausalLM (hf)."""
    return CausalLM(cfg, device) if cfg.layout == "hf" else LlamaModel(cfg, device)


# ----------------------------------------------------------------------------------------------------------------
# Synthetic weights


SYNTHETIC_BLOCK = 1 << 22  # values per independently seeded row block of a synthetic matrix


def synthetic_blocks(cfg: LlamaConfig, name: str, seed: int) -> Iterator[torch.Tensor]:
    """The seeded random fp32 value of parameter `name`, as consecutive row blocks: norms are 1, biases 0, matrices
    N(0, 1 / in_features) (the embedding's rows too, so a tied head is scaled like the other linears), which keeps
    activations O(1) through any depth; a tied lm_head is the embedding. Each block of
    max(1, SYNTHETIC_BLOCK // in_features) rows has its own generator seeded from (seed, name, block index), so a
    model is generated a piece at a time, in any order, with bounded memory."""
    shapes = dict(cfg.parameter_shapes())
    if name not in shapes:
        raise KeyError(f"no parameter '{name}' in a model of this config")
    shape = shapes[name]
    if len(shape) == 1:
        yield torch.zeros(shape) if name.endswith(".bias") else torch.ones(shape)
        return
    key = f"{cfg.prefix}embed_tokens.weight" if name == "lm_head.weight" and cfg.tied_embeddings else name
    rows, cols = shape
    step = max(1, SYNTHETIC_BLOCK // cols)
    for block, r in enumerate(range(0, rows, step)):
        # zlib.crc32 is stable across runs, unlike hash(); the seed is reduced to 63 bits.
        gen = torch.Generator().manual_seed((seed * 0x9E3779B1 + zlib.crc32(f"{key}/{block}".encode())) % (1 << 63))
        yield torch.randn(min(step, rows - r), cols, generator=gen).mul_(1.0 / math.sqrt(cols))


def synthetic_tensor(cfg: LlamaConfig, name: str, seed: int) -> torch.Tensor:
    """The whole of synthetic_blocks(cfg, name, seed)."""
    return torch.cat(list(synthetic_blocks(cfg, name, seed)))


def random_model(cfg: LlamaConfig, seed: int = 0) -> nn.Module:
    """An eager model with synthetic_tensor weights (for plumbing checks only: it produces no text)."""
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(synthetic_tensor(cfg, name, seed))
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# Generation and evaluation (work on an eager LlamaModel or its TorchScript, float or quantized)


@torch.no_grad()
def generate_greedy(model: nn.Module, steps: int, prompt: Sequence[int] = (BOS,)) -> List[int]:
    """Greedy decoding as llama2.c's run.c with temperature 0: feeds the prompt one token at a time, then the argmax
    of each step, until `steps` positions have been run or BOS comes out. Returns the tokens after the first one
    (what run.c prints)."""
    prompt = list(prompt)
    cache = model.init_cache(1, steps)
    logits = model.forward_cached(torch.tensor([prompt[:1]]), 0, cache)
    out: List[int] = []
    pos = 0
    while pos < steps:
        nxt = prompt[pos + 1] if pos + 1 < len(prompt) else int(logits[0, -1].argmax())
        pos += 1
        if nxt == BOS:
            break
        out.append(nxt)
        if pos >= steps:
            break
        logits = model.forward_cached(torch.tensor([[nxt]]), pos, cache)
    return out


def length_batches(sequences: Sequence[Sequence[int]], max_tokens: int = 2048) -> List[List[int]]:
    """Indices of the sequences grouped into batches of similar lengths, each padding to at most max_tokens tokens
    (a long sequence gets a batch of its own). Attention costs batch * T^2, so mixing lengths would waste most of it
    on padding."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    batches: List[List[int]] = []
    current: List[int] = []
    for i in order:
        # Sorted ascending, so sequence i is the longest of the batch if it joins.
        if current and (len(current) + 1) * len(sequences[i]) > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_batch(sequences: Sequence[Sequence[int]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Right-padded tokens [B, T] (pad id 0) and the mask of real tokens [B, T]."""
    T = max(len(s) for s in sequences)
    tokens = torch.zeros(len(sequences), T, dtype=torch.long)
    valid = torch.zeros(len(sequences), T, dtype=torch.bool)
    for r, s in enumerate(sequences):
        tokens[r, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        valid[r, :len(s)] = True
    return tokens, valid


@torch.no_grad()
def sequence_nll(model: nn.Module, sequences: Sequence[Sequence[int]]) -> Tuple[float, int]:
    """Sum of next-token negative log-likelihoods (nats) over all sequences and the number of predicted tokens.
    Each sequence is scored on its own; batches are right-padded, which causal attention makes harmless (padding
    only follows the real tokens and its predictions are masked out)."""
    total, count = 0.0, 0
    for indices in length_batches(sequences):
        batch = [sequences[i] for i in indices]
        T = max(len(s) for s in batch)
        if T < 2:
            continue
        tokens, real = pad_batch(batch)
        valid = real[:, 1:]  # position t predicts token t + 1
        logits = model(tokens)
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
                              tokens[:, 1:].reshape(-1), reduction="none").view(len(batch), T - 1)
        total += float(nll[valid].sum())
        count += int(valid.sum())
    return total, count
