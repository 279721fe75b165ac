"""llama2.c checkpoints in plain PyTorch: the legacy .bin reader, a Llama built from nn.Linear layers, and the
SentencePiece-BPE tokenizer of llama2.c's tokenizer.bin format.

The model is TorchScript-scriptable (so a copy whose Linears were swapped for packed lwq ops can be saved and
reloaded without Python), and its forward takes an explicit key/value cache, so one code path serves both
evaluation (whole sequences) and greedy decoding (one token at a time).

Only torch and the standard library are needed; run with /usr/bin/python3 (Debian's python3-torch).
"""

import heapq
import math
import os
import re
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

BOS = 1
EOS = 2
BYTE_PIECE_OFFSET = 3  # ids 3..258 are the byte-fallback pieces <0x00>..<0xFF>
NORM_EPS = 1e-5
ROPE_THETA = 10000.0

_HEADER = struct.Struct("<7i")


@dataclass
class Config:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool = True

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size

    def parameter_count(self) -> int:
        """Number of fp32 values stored after the header (the legacy format also stores the rotary tables)."""
        L, d, h, kv = self.n_layers, self.dim, self.hidden_dim, self.kv_dim
        n = self.vocab_size * d  # token embedding
        n += L * d  # rms_att
        n += L * (d * d + 2 * kv * d + d * d)  # wq, wk, wv, wo
        n += L * d  # rms_ffn
        n += L * 3 * h * d  # w1, w2, w3
        n += d  # rms_final
        n += 2 * self.seq_len * (self.head_size // 2)  # freq_cis_real, freq_cis_imag
        if not self.shared_classifier:
            n += self.vocab_size * d
        return n


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint


def read_checkpoint(path: str) -> Tuple[Config, Dict[str, torch.Tensor]]:
    """Reads a llama2.c legacy checkpoint: 7 int32 header values, then the fp32 arrays in llama2.c's order.

    Returns the config and a dict of tensors named as in LlamaModel's state_dict (per-layer arrays split).
    Raises ValueError naming the file when the header is implausible or the size is not exactly what it implies.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _HEADER.size:
        raise ValueError(f"{path}: {len(data)} bytes, too short for the 28-byte llama2.c header")
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = _HEADER.unpack_from(data, 0)
    shared = vocab > 0
    cfg = Config(dim, hidden, n_layers, n_heads, n_kv_heads, abs(vocab), seq_len, shared)
    if min(dim, hidden, n_layers, n_heads, n_kv_heads, cfg.vocab_size, seq_len) <= 0:
        raise ValueError(f"{path}: not a llama2.c checkpoint, header has a non-positive size: {cfg}")
    if dim % n_heads != 0 or n_heads % n_kv_heads != 0 or cfg.head_size % 2 != 0:
        raise ValueError(f"{path}: inconsistent header (dim % n_heads, n_heads % n_kv_heads, even head size "
                         f"expected): {cfg}")
    expected = _HEADER.size + 4 * cfg.parameter_count()
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(f"{path}: file {what}: the header {cfg} implies {expected} bytes, the file has "
                         f"{len(data)}")

    values = torch.frombuffer(bytearray(data[_HEADER.size:]), dtype=torch.float32)
    offset = 0

    def take(*shape: int) -> torch.Tensor:
        nonlocal offset
        n = math.prod(shape)
        t = values[offset:offset + n].view(*shape).clone()
        offset += n
        return t

    L, d, h, kv, hs = n_layers, dim, hidden, cfg.kv_dim, cfg.head_size
    sd: Dict[str, torch.Tensor] = {"tok_embeddings.weight": take(cfg.vocab_size, d)}
    per_layer = [
        ("attention_norm.weight", (d,)),
        ("attention.wq.weight", (d, d)),
        ("attention.wk.weight", (kv, d)),
        ("attention.wv.weight", (kv, d)),
        ("attention.wo.weight", (d, d)),
        ("ffn_norm.weight", (d,)),
        ("feed_forward.w1.weight", (h, d)),
        ("feed_forward.w2.weight", (d, h)),
        ("feed_forward.w3.weight", (h, d)),
    ]
    for name, shape in per_layer:
        stacked = take(L, *shape)
        for i in range(L):
            sd[f"layers.{i}.{name}"] = stacked[i].clone()
    sd["norm.weight"] = take(d)
    sd["freq_cis_real"] = take(seq_len, hs // 2)
    sd["freq_cis_imag"] = take(seq_len, hs // 2)
    sd["output.weight"] = sd["tok_embeddings.weight"] if shared else take(cfg.vocab_size, d)
    assert offset == values.numel()
    return cfg, sd


# ----------------------------------------------------------------------------------------------------------------
# Model


def rotary_tables(head_size: int, seq_len: int, theta: float = ROPE_THETA) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [seq_len, head_size / 2] for rotating adjacent pairs (x[2i], x[2i+1]) of each head."""
    freqs = 1.0 / theta ** (torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), freqs)
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, hs]; cos/sin [T, hs/2]. Rotates each adjacent pair by its position's angle."""
    pairs = x.reshape(x.shape[0], x.shape[1], x.shape[2], -1, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(3)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_size = cfg.head_size
        self.wq = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.kv_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.kv_dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, past_k: Optional[torch.Tensor],
                past_v: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T = x.shape[0], x.shape[1]
        q = apply_rotary(self.wq(x).view(B, T, self.n_heads, self.head_size), cos, sin)
        k = apply_rotary(self.wk(x).view(B, T, self.n_kv_heads, self.head_size), cos, sin)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_size)
        if past_k is not None and past_v is not None:
            k = torch.cat((past_k, k), dim=1)
            v = torch.cat((past_v, v), dim=1)
        S = k.shape[1]
        # Grouped-query attention: query head h reads key/value head h // (n_heads / n_kv_heads).
        rep = self.n_heads // self.n_kv_heads
        kh = k.transpose(1, 2).repeat_interleave(rep, dim=1)  # [B, H, S, hs]
        vh = v.transpose(1, 2).repeat_interleave(rep, dim=1)
        scores = torch.matmul(q.transpose(1, 2), kh.transpose(2, 3)) / math.sqrt(self.head_size)
        if T > 1:
            # The T new queries sit at positions S - T .. S - 1: each sees the keys up to its own position.
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
            scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.matmul(F.softmax(scores, dim=-1), vh).transpose(1, 2).reshape(B, T, -1)
        return self.wo(out), k, v


class FeedForward(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, past_k: Optional[torch.Tensor],
                past_v: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, k, v = self.attention(self.attention_norm(x), cos, sin, past_k, past_v)
        h = x + a
        return h + self.feed_forward(self.ffn_norm(h)), k, v


class LlamaModel(nn.Module):
    """forward(tokens [B, T], cache) -> (logits [B, T, vocab], new cache). The cache is a list of (k, v) per layer,
    each [B, S, n_kv_heads, head_size] (rotary already applied to k); an empty list starts at position 0."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.vocab_size = cfg.vocab_size
        self.seq_len = cfg.seq_len
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.dim)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rotary_tables(cfg.head_size, cfg.seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, tokens: torch.Tensor, cache: List[Tuple[torch.Tensor, torch.Tensor]]
                ) -> Tuple[torch.Tensor, List[Tuple[torch.Tensor, torch.Tensor]]]:
        start = 0
        if len(cache) > 0:
            start = cache[0][0].shape[1]
        T = tokens.shape[1]
        if start + T > self.seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds the model's seq_len {self.seq_len}")
        cos = self.rope_cos[start:start + T]
        sin = self.rope_sin[start:start + T]
        h = self.tok_embeddings(tokens)
        new_cache: List[Tuple[torch.Tensor, torch.Tensor]] = []
        for i, layer in enumerate(self.layers):
            past_k: Optional[torch.Tensor] = None
            past_v: Optional[torch.Tensor] = None
            if len(cache) > 0:
                past_k, past_v = cache[i]
            h, k, v = layer(h, cos, sin, past_k, past_v)
            new_cache.append((k, v))
        return self.output(self.norm(h)), new_cache


def build_model(cfg: Config, state: Dict[str, torch.Tensor]) -> LlamaModel:
    """A LlamaModel in eval mode holding the checkpoint's weights. The stored rotary tables are checked against the
    ones the model computes (theta 10000), which catches a checkpoint trained with another rotary base."""
    model = LlamaModel(cfg)
    weights = {k: v for k, v in state.items() if not k.startswith("freq_cis_")}
    model.load_state_dict(weights, strict=True)
    if cfg.shared_classifier:
        model.output.weight = model.tok_embeddings.weight
    if "freq_cis_real" in state:
        for name, ours in (("freq_cis_real", model.rope_cos), ("freq_cis_imag", model.rope_sin)):
            if not torch.allclose(state[name], ours, atol=1e-4):
                raise ValueError(f"checkpoint {name} differs from rotary tables with theta {ROPE_THETA}")
    return model.eval()


def load_model(path: str) -> LlamaModel:
    cfg, state = read_checkpoint(path)
    return build_model(cfg, state)


def random_model(cfg: Config, seed: int = 0) -> LlamaModel:
    """A model of the given shape with seeded random weights (for plumbing checks only: it produces no text)."""
    gen = torch.Generator().manual_seed(seed)
    model = LlamaModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    return model.eval()


@torch.no_grad()
def generate_greedy(model: nn.Module, steps: int, prompt: Sequence[int] = (BOS,)) -> List[int]:
    """Greedy decoding as llama2.c's run.c with temperature 0: feeds the prompt, then the argmax of each step, until
    `steps` positions have been run or BOS comes out. Returns the tokens after the first one (what gets printed)."""
    prompt = list(prompt)
    cache: List[Tuple[torch.Tensor, torch.Tensor]] = []
    logits, cache = model(torch.tensor([prompt[:1]]), cache)
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
        logits, cache = model(torch.tensor([[nxt]]), cache)
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
        logits, _ = model(tokens, [])
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
                              tokens[:, 1:].reshape(-1), reduction="none").view(len(batch), T - 1)
        total += float(nll[valid].sum())
        count += int(valid.sum())
    return total, count


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer

_BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{2})>")


class Tokenizer:
    """llama2.c's tokenizer.bin: int32 max_token_length, then per piece float32 score, int32 length, bytes."""

    def __init__(self, path: str):
        with open(path, "rb") as f:
            data = f.read()
        if len(data) < 4:
            raise ValueError(f"{path}: {len(data)} bytes, too short for a llama2.c tokenizer")
        (self.max_token_length,) = struct.unpack_from("<i", data, 0)
        pos = 4
        self.pieces: List[bytes] = []
        self.scores: List[float] = []
        while pos < len(data):
            if pos + 8 > len(data):
                raise ValueError(f"{path}: truncated in the header of piece {len(self.pieces)}")
            score, n = struct.unpack_from("<fi", data, pos)
            pos += 8
            if n < 0 or pos + n > len(data):
                raise ValueError(f"{path}: truncated or corrupt at piece {len(self.pieces)} (length {n})")
            self.pieces.append(data[pos:pos + n])
            self.scores.append(score)
            pos += n
        if len(self.pieces) < BYTE_PIECE_OFFSET + 256:
            raise ValueError(f"{path}: {len(self.pieces)} pieces, fewer than the 259 special and byte pieces")
        for b in range(256):
            if self.pieces[BYTE_PIECE_OFFSET + b] != b"<0x%02X>" % b:
                raise ValueError(f"{path}: piece {BYTE_PIECE_OFFSET + b} is {self.pieces[BYTE_PIECE_OFFSET + b]!r}, "
                                 f"expected the byte-fallback piece <0x{b:02X}>")
        # Lookup from piece bytes to id; like llama2.c's binary search, one id per string (the first one here).
        self.piece_id: Dict[bytes, int] = {}
        for i, p in enumerate(self.pieces):
            self.piece_id.setdefault(p, i)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> List[int]:
        """SentencePiece BPE as llama2.c: a dummy-prefix space, one piece per UTF-8 character (or its bytes as
        byte-fallback ids), then repeatedly merge the adjacent pair whose concatenation is a piece with the highest
        score (the leftmost pair on ties)."""
        ids: List[int] = []
        if text:
            for ch in " " + text:
                raw = ch.encode("utf-8")
                pid = self.piece_id.get(raw)
                if pid is not None:
                    ids.append(pid)
                else:
                    ids.extend(BYTE_PIECE_OFFSET + b for b in raw)
        ids = self._merge(ids)
        return ([BOS] if bos else []) + ids + ([EOS] if eos else [])

    def _merge(self, ids: List[int]) -> List[int]:
        # A heap of candidate merges keyed by (-score, position of the left piece): popping gives the best score
        # and, among equal scores, the leftmost pair, so the result is that of rescanning after every merge.
        # Pieces live in a linked list; a stamp per position invalidates candidates whose pieces changed.
        n = len(ids)
        if n < 2:
            return ids
        tok = list(ids)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        stamp = [0] * n
        alive = [True] * n
        heap: List[Tuple[float, int, int, int, int, int]] = []

        def push(i: int) -> None:
            j = nxt[i]
            if j >= n:
                return
            merged = self.piece_id.get(self.pieces[tok[i]] + self.pieces[tok[j]])
            if merged is not None:
                heapq.heappush(heap, (-self.scores[merged], i, j, stamp[i], stamp[j], merged))

        for i in range(n - 1):
            push(i)
        while heap:
            _, i, j, si, sj, merged = heapq.heappop(heap)
            if not (alive[i] and alive[j]) or nxt[i] != j or stamp[i] != si or stamp[j] != sj:
                continue
            tok[i] = merged
            stamp[i] += 1
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            if prv[i] >= 0:
                push(prv[i])
            push(i)
        out = []
        i = 0
        while i < n:
            out.append(tok[i])
            i = nxt[i]
        return out

    def piece_bytes(self, prev: int, token: int) -> bytes:
        """The bytes llama2.c's decode gives for `token` following `prev`: byte pieces become their byte, and the
        leading space of the first piece after BOS is dropped."""
        piece = self.pieces[token]
        if prev == BOS and piece.startswith(b" "):
            piece = piece[1:]
        m = _BYTE_PIECE.fullmatch(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        return piece

    def decode(self, tokens: Sequence[int], prev: int = BOS, as_printed: bool = False) -> str:
        """Text of `tokens`, which follow `prev` (BOS by default, whose following space is dropped). By default
        BOS/EOS are skipped and byte pieces are reassembled into UTF-8. as_printed=True gives exactly what llama2.c's
        run.c prints instead: every piece (EOS included), except lone bytes that are neither printable ASCII nor
        whitespace, which its safe_printf drops (so non-ASCII byte-fallback text disappears there)."""
        out = bytearray()
        for t in tokens:
            if not as_printed and t in (BOS, EOS):
                prev = t
                continue
            b = self.piece_bytes(prev, t)
            prev = t
            if as_printed and len(b) == 1 and not (32 <= b[0] < 127 or b[0] in b" \t\n\v\f\r"):
                continue
            out += b
        return out.decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------------------------------------
# Data


def default_data_dir() -> str:
    """<repo>/../shared/data, the repo being the parent of this script's directory."""
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))


def read_segments(path: str, count: Optional[int] = None, last: bool = False) -> List[str]:
    """Blank-line separated paragraphs of a text file (the first `count`, or the last `count` with last=True)."""
    with open(path, encoding="utf-8") as f:
        segments = [s.strip() for s in re.split(r"\n[ \t]*\n", f.read())]
    segments = [s for s in segments if s]
    if count is None:
        return segments
    return segments[-count:] if last else segments[:count]


def eval_sequences(tokenizer: Tokenizer, segments: Sequence[str], seq_len: int) -> List[List[int]]:
    """BOS + tokens of each segment, truncated to seq_len tokens."""
    return [tokenizer.encode(s, bos=True)[:seq_len] for s in segments]
