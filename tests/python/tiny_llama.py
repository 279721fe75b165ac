#!/usr/bin/python3
"""A tiny random Llama satisfying MODEL_CONTRACT.md, and a tiny llama2.c tokenizer, for the tests of `lwq eval` and
`lwq generate` that must run without ../shared/data (the real check exports stories260K with
scripts/export_llama.py).

Writes into --out:
  model.pt           torch.jit.script of the model with EMPTY (meta) parameters and real rotary buffers
  model.safetensors  its weights by qualified parameter name
  config.json        the contract's config fields
  tokenizer.bin      llama2.c format: <unk>, BOS, EOS, the 256 byte pieces, characters and a few merges
  text.txt           a few blank-line separated paragraphs (CRLF line ends, a whitespace-only separator line)
  reference.json     what the eager model gives: mean NLL per sequence set, greedy tokens (run.c loop)

Run with /usr/bin/python3 (Debian's python3-torch).
"""
import argparse
import json
import math
import pathlib
import struct
import sys
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
from make_test_models import write_safetensors  # noqa: E402

DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, MAX_SEQ_LEN = 32, 48, 2, 4, 2, 64
BOS, EOS = 1, 2

CHARS = list(" abcdefghijklmnopqrstuvwxyz.,'") + ["é"]
MERGES = [" t", "he", " the", " a", "an", "nd", " and", "in", " s", "er", " w", "as", " was", "on", "ed", "re"]

TEXT = ("the cat sat on the mat. it was warm and the sun was out.\r\n"
        "a dog ran in and sat there.\r\n"
        "\r\n"
        "  she went to the river, and the water was cold.  \r\n"
        "  \t \r\n"
        "he said: “café!” 日本 was far.\r\n"
        "\r\n\r\n\r\n"
        "the end\r\n")


def tokenizer_pieces():
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b"<0x%02X>" % b for b in range(256)]
    scores = [0.0] * len(pieces)
    pieces += [m.encode() for m in MERGES]
    scores += [-float(i) for i in range(len(MERGES))]
    pieces += [c.encode() for c in CHARS]
    scores += [-100.0 - i for i in range(len(CHARS))]
    return pieces, scores


def write_tokenizer(path: pathlib.Path) -> int:
    pieces, scores = tokenizer_pieces()
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(len(p) for p in pieces)))
        for p, s in zip(pieces, scores):
            f.write(struct.pack("<fi", s, len(p)))
            f.write(p)
    return len(pieces)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Adjacent pairs (2i, 2i+1) of x [B, T, H, hd] rotated by cos/sin [T, hd/2]."""
    pairs = x.reshape(x.shape[0], x.shape[1], x.shape[2], -1, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(3)


class RMSNorm(nn.Module):
    def __init__(self, device: Optional[str]):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(DIM, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight


class Attention(nn.Module):
    def __init__(self, device: Optional[str]):
        super().__init__()
        self.heads, self.kv_heads, self.dim = HEADS, KV_HEADS, DIM
        hd = DIM // HEADS
        self.q_proj = nn.Linear(DIM, DIM, bias=False, device=device)
        self.k_proj = nn.Linear(DIM, KV_HEADS * hd, bias=False, device=device)
        self.v_proj = nn.Linear(DIM, KV_HEADS * hd, bias=False, device=device)
        self.o_proj = nn.Linear(DIM, DIM, bias=False, device=device)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, start_pos: int) -> torch.Tensor:
        B, T, hd = x.shape[0], x.shape[1], self.dim // self.heads
        q = rotate(self.q_proj(x).view(B, T, self.heads, hd), cos, sin).transpose(1, 2)
        k = rotate(self.k_proj(x).view(B, T, self.kv_heads, hd), cos, sin)
        k_cache[:, :, start_pos:start_pos + T] = k.transpose(1, 2)
        v_cache[:, :, start_pos:start_pos + T] = self.v_proj(x).view(B, T, self.kv_heads, hd).transpose(1, 2)
        S = start_pos + T
        k = k_cache[:, :, :S].repeat_interleave(self.heads // self.kv_heads, dim=1)
        v = v_cache[:, :, :S].repeat_interleave(self.heads // self.kv_heads, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(hd)
        mask = torch.ones(T, S, dtype=torch.bool).tril(start_pos)
        scores = scores.masked_fill(~mask, float("-inf"))
        return self.o_proj(torch.matmul(F.softmax(scores, dim=-1), v).transpose(1, 2).reshape(B, T, self.dim))


class MLP(nn.Module):
    def __init__(self, device: Optional[str]):
        super().__init__()
        self.gate_proj = nn.Linear(DIM, HIDDEN, bias=False, device=device)
        self.up_proj = nn.Linear(DIM, HIDDEN, bias=False, device=device)
        self.down_proj = nn.Linear(HIDDEN, DIM, bias=False, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, device: Optional[str]):
        super().__init__()
        self.input_layernorm = RMSNorm(device)
        self.self_attn = Attention(device)
        self.post_attention_layernorm = RMSNorm(device)
        self.mlp = MLP(device)
        self.kv_heads, self.head_dim = KV_HEADS, DIM // HEADS

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T = x.shape[0], x.shape[1]
        k = torch.zeros(B, self.kv_heads, T, self.head_dim)
        v = torch.zeros(B, self.kv_heads, T, self.head_dim)
        return self.forward_cached(x, cos, sin, k, v, 0)

    @torch.jit.export
    def forward_cached(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                       v_cache: torch.Tensor, start_pos: int) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, start_pos)
        return h + self.mlp(self.post_attention_layernorm(h))


class TinyLlama(nn.Module):
    def __init__(self, vocab: int, device: Optional[str] = None):
        super().__init__()
        self.max_seq_len = MAX_SEQ_LEN
        self.n_layers, self.kv_heads, self.head_dim = LAYERS, KV_HEADS, DIM // HEADS
        self.embed_tokens = nn.Embedding(vocab, DIM, device=device)
        self.layers = nn.ModuleList([Block(device) for _ in range(LAYERS)])
        self.norm = RMSNorm(device)
        self.lm_head = nn.Linear(DIM, vocab, bias=False, device=device)
        hd = DIM // HEADS
        freqs = 1.0 / 10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        angles = torch.outer(torch.arange(MAX_SEQ_LEN, dtype=torch.float64), freqs)
        self.register_buffer("rope_cos", torch.cos(angles).float(), persistent=False)
        self.register_buffer("rope_sin", torch.sin(angles).float(), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.lm_head(self.norm(h))

    @torch.jit.export
    def init_cache(self, batch: int, max_len: int) -> List[torch.Tensor]:
        return [torch.zeros(batch, self.kv_heads, max_len, self.head_dim) for _ in range(2 * self.n_layers)]

    @torch.jit.export
    def forward_cached(self, input_ids: torch.Tensor, start_pos: int, cache: List[torch.Tensor]) -> torch.Tensor:
        T = input_ids.shape[1]
        cos, sin = self.rope_cos[start_pos:start_pos + T], self.rope_sin[start_pos:start_pos + T]
        h = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            h = layer.forward_cached(h, cos, sin, cache[2 * i], cache[2 * i + 1], start_pos)
        return self.lm_head(self.norm(h))


@torch.no_grad()
def sequence_nll(model: nn.Module, sequences) -> float:
    """Mean next-token NLL, each sequence alone (no padding): the plain definition the C++ batching must match."""
    total, count = 0.0, 0
    for s in sequences:
        if len(s) < 2:
            continue
        logits = model(torch.tensor([s]))[0, :-1].double()
        total += float(F.cross_entropy(logits, torch.tensor(s[1:]), reduction="sum"))
        count += len(s) - 1
    return total / count


@torch.no_grad()
def run_c_loop(model: nn.Module, prompt: List[int], steps: int) -> List[int]:
    """run.c's generate at temperature 0, one position at a time: the tokens it would print."""
    cache = model.init_cache(1, steps)
    token, out = prompt[0], []
    for pos in range(steps):
        logits = model.forward_cached(torch.tensor([[token]]), pos, cache)
        nxt = prompt[pos + 1] if pos + 1 < len(prompt) else int(logits[0, -1].argmax())
        if nxt == BOS:
            break
        out.append(nxt)
        token = nxt
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(args.out / "tokenizer.bin")
    (args.out / "text.txt").write_bytes(TEXT.encode("utf-8"))

    gen = torch.Generator().manual_seed(args.seed)
    model = TinyLlama(vocab).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.1 if name.endswith("norm.weight") else 1 / math.sqrt(p.shape[-1])
            base = 1.0 if name.endswith("norm.weight") else 0.0
            # A larger embedding/head scale makes the greedy argmax clear of near ties.
            if name in ("embed_tokens.weight", "lm_head.weight"):
                scale = 1.0
            p.copy_(base + scale * torch.randn(p.shape, generator=gen))
    write_safetensors(args.out / "model.safetensors", dict(model.named_parameters()))
    torch.jit.script(TinyLlama(vocab, device="meta").eval()).save(str(args.out / "model.pt"))
    config = {"architecture": "llama", "dim": DIM, "hidden_dim": HIDDEN, "n_layers": LAYERS, "n_heads": HEADS,
              "n_kv_heads": KV_HEADS, "vocab_size": vocab, "max_seq_len": MAX_SEQ_LEN, "norm_eps": 1e-5,
              "rope_theta": 10000.0, "tied_embeddings": False, "dtype": "float32", "source": "tests/python/tiny_llama.py"}
    (args.out / "config.json").write_text(json.dumps(config, indent=2))

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
    import llama2c  # the Python reference tokenizer and text protocol
    tok = llama2c.Tokenizer(str(args.out / "tokenizer.bin"))
    segments = llama2c.read_segments(str(args.out / "text.txt"))
    reference = {"segments": segments}
    for seq_len in (MAX_SEQ_LEN, 8):
        seqs = llama2c.eval_sequences(tok, segments, seq_len)
        reference[f"nll_seq_len_{seq_len}"] = sequence_nll(model, seqs)
        reference[f"tokens_seq_len_{seq_len}"] = sum(max(len(s) - 1, 0) for s in seqs)
    prompt = tok.encode("the cat", bos=True)
    reference["greedy"] = {"steps": 40, "prompt": "the cat", "tokens": run_c_loop(model, prompt, 40)}
    reference["greedy"]["printed"] = tok.decode(reference["greedy"]["tokens"], as_printed=True) + "\n"
    (args.out / "reference.json").write_text(json.dumps(reference, indent=1))


if __name__ == "__main__":
    main()
