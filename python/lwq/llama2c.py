"""llama2.c files in plain PyTorch: the legacy checkpoint (.bin) reader and the SentencePiece-BPE tokenizer of
llama2.c's tokenizer.bin format, plus the text helpers of the evaluation protocol.

The model itself is lwq.llama (the exported TorchScript contract); this file maps llama2.c's arrays onto its
parameter names. The checkpoint is read one tensor at a time (Checkpoint.read), so even a multi-gigabyte file
is never resident as a whole.

Only torch and the standard library are needed; run with /usr/bin/python3 (Debian's python3-torch).
"""

import heapq
import math
import os
import re
import struct
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .llama import BOS, EOS, LlamaConfig, LlamaModel, rotary_tables

BYTE_PIECE_OFFSET = 3  # ids 3..258 are the byte-fallback pieces <0x00>..<0xFF>
NORM_EPS = 1e-5
ROPE_THETA = 10000.0

_HEADER = struct.Struct("<7i")
# llama2.c's export.py --version 1/2 files start with this uint32 ("ak42"), then an int32 version.
VERSIONED_MAGIC = 0x616B3432


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint


class Checkpoint:
    """A llama2.c legacy checkpoint: 7 int32 header values (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
    vocab_size, seq_len; a negative vocab_size means the classifier is stored separately), then fp32 arrays, each
    stacked over the layers: token embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final,
    freq_cis_real, freq_cis_imag[, wcls].

    Opening validates the header and that the file size is exactly what it implies (ValueError naming the file);
    read(name) returns one tensor, under lwq.llama's parameter names."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
        if len(head) >= 8 and struct.unpack_from("<I", head, 0)[0] == VERSIONED_MAGIC:
            version = struct.unpack_from("<i", head, 4)[0]
            raise ValueError(f"{path}: a llama2.c version-{version} export (magic 'ak42') is not supported: "
                             f"export the model in the legacy format (llama2.c export.py --version 0)")
        if len(head) < _HEADER.size:
            raise ValueError(f"{path}: {size} bytes, too short for the 28-byte llama2.c header")
        dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = _HEADER.unpack(head)
        if min(dim, hidden, n_layers, n_heads, n_kv_heads, abs(vocab), seq_len) <= 0:
            raise ValueError(f"{path}: not a llama2.c checkpoint, header has a non-positive size: dim {dim}, "
                             f"hidden_dim {hidden}, n_layers {n_layers}, n_heads {n_heads}, n_kv_heads "
                             f"{n_kv_heads}, vocab_size {vocab}, seq_len {seq_len}")
        if dim % n_heads != 0 or n_heads % n_kv_heads != 0 or (dim // n_heads) % 2 != 0:
            raise ValueError(f"{path}: inconsistent header (dim % n_heads, n_heads % n_kv_heads, even head size "
                             f"expected): dim {dim}, n_heads {n_heads}, n_kv_heads {n_kv_heads}")
        self.config = LlamaConfig(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads,
                                  n_kv_heads=n_kv_heads, vocab_size=abs(vocab), max_seq_len=seq_len,
                                  norm_eps=NORM_EPS, rope_theta=ROPE_THETA, tied_embeddings=vocab > 0)
        cfg = self.config
        L, d, h, kv, V = n_layers, dim, hidden, cfg.kv_dim, cfg.vocab_size
        half = cfg.head_dim // 2
        # (array, shape of one layer's slice or of the whole array, stacked over layers, parameter name in a block)
        arrays = [
            ("tok_embeddings", (V, d), False, "embed_tokens.weight"),
            ("rms_att", (d,), True, "input_layernorm.weight"),
            ("wq", (d, d), True, "self_attn.q_proj.weight"),
            ("wk", (kv, d), True, "self_attn.k_proj.weight"),
            ("wv", (kv, d), True, "self_attn.v_proj.weight"),
            ("wo", (d, d), True, "self_attn.o_proj.weight"),
            ("rms_ffn", (d,), True, "post_attention_layernorm.weight"),
            ("w1", (h, d), True, "mlp.gate_proj.weight"),
            ("w2", (d, h), True, "mlp.down_proj.weight"),
            ("w3", (h, d), True, "mlp.up_proj.weight"),
            ("rms_final", (d,), False, "norm.weight"),
            ("freq_cis_real", (seq_len, half), False, "freq_cis_real"),
            ("freq_cis_imag", (seq_len, half), False, "freq_cis_imag"),
        ]
        if not cfg.tied_embeddings:
            arrays.append(("wcls", (V, d), False, "lm_head.weight"))
        # name -> (byte offset, shape)
        self.locations: Dict[str, Tuple[int, Tuple[int, ...]]] = {}
        offset = _HEADER.size
        for _, shape, stacked, name in arrays:
            n = 4 * math.prod(shape)
            if stacked:
                for i in range(L):
                    self.locations[f"layers.{i}.{name}"] = (offset + i * n, shape)
                offset += L * n
            else:
                self.locations[name] = (offset, shape)
                offset += n
        if cfg.tied_embeddings:
            self.locations["lm_head.weight"] = self.locations["embed_tokens.weight"]
        if size != offset:
            what = "truncated" if size < offset else f"has {size - offset} trailing bytes"
            raise ValueError(f"{path}: file {what}: the header (dim {dim}, hidden_dim {hidden}, n_layers "
                             f"{n_layers}, n_heads {n_heads}, n_kv_heads {n_kv_heads}, vocab_size {vocab}, seq_len "
                             f"{seq_len}) implies {offset} bytes, the file has {size}")

    def shape(self, name: str) -> Tuple[int, ...]:
        if name not in self.locations:
            raise KeyError(f"{self.path}: no tensor '{name}' in a llama2.c checkpoint")
        return self.locations[name][1]

    def read(self, name: str, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """One fp32 tensor by lwq.llama parameter name (or freq_cis_real / freq_cis_imag), or its rows
        start..stop-1 (a part of a large matrix)."""
        shape = self.shape(name)
        offset = self.locations[name][0]
        row = math.prod(shape[1:])
        stop = shape[0] if stop is None else stop
        out = torch.empty((stop - start,) + tuple(shape[1:]), dtype=torch.float32)
        with open(self.path, "rb") as f:
            f.seek(offset + 4 * row * start)
            got = f.readinto(memoryview(out.numpy()).cast("B"))
        if got != out.numel() * 4:
            raise ValueError(f"{self.path}: tensor '{name}': read {got} of {out.numel() * 4} bytes")
        return out

    def check_rotary(self) -> None:
        """The stored rotary tables must be the ones the model computes (theta 10000): another rotary base would
        load fine and give wrong results."""
        cos, sin = rotary_tables(self.config)
        for name, ours in (("freq_cis_real", cos), ("freq_cis_imag", sin)):
            if not torch.allclose(self.read(name), ours, atol=1e-4):
                raise ValueError(f"{self.path}: {name} differs from rotary tables with theta {ROPE_THETA}")


def read_checkpoint(path: str) -> Tuple[LlamaConfig, Dict[str, torch.Tensor]]:
    """The config and every parameter of a (small) checkpoint, by lwq.llama parameter name."""
    ckpt = Checkpoint(path)
    return ckpt.config, {name: ckpt.read(name) for name, _ in ckpt.config.parameter_shapes()}


def load_model(path: str) -> LlamaModel:
    """An eager LlamaModel in eval mode holding the checkpoint's weights (rotary tables checked)."""
    ckpt = Checkpoint(path)
    ckpt.check_rotary()
    model = LlamaModel(ckpt.config)
    model.load_state_dict({name: ckpt.read(name) for name, _ in ckpt.config.parameter_shapes()}, strict=True)
    if ckpt.config.tied_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval()


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
