#!/usr/bin/python3
"""Small deterministic models for the layer-wise pipeline's tests and demos.

Writes into --out:
  scripted.pt                 TorchScript (torch.jit.script) of a 3-block model with EMPTY (meta) parameters
  scripted.safetensors        its weights, named by qualified parameter name
  scripted_reference.pt       {"x": input [B, L, D], "y": fp32 output} (torch.save)
  traced.pt                   TorchScript (torch.jit.trace) of an MLP holding its real weights (no weights file);
                              its head reaches a submodule's weight through a GetAttr chain (F.linear on
                              self.head.weight), the form tracing gives when a parent uses a child's parameters
  traced_reference.pt         {"x": ..., "y": ...}

safetensors is written with json + struct (the package is not available here): 8-byte little-endian header
length, JSON header, raw little-endian data.
"""
import argparse
import json
import pathlib
import struct

import torch

SCRIPTED_DIM, SCRIPTED_HIDDEN, SCRIPTED_BLOCKS = 48, 80, 3  # 48 and 80 leave a ragged last group of 32
TRACED_IN, TRACED_HIDDEN, TRACED_OUT = 40, 72, 24

_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
              torch.int64: "I64"}
_ST_TORCH = {v: k for k, v in _ST_DTYPES.items()}


def write_safetensors(path, tensors):
    """tensors: dict name -> tensor (CPU). Data in name order, 8-byte aligned header."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        raw = t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def read_safetensors(path):
    data = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        buf = bytearray(data[base + begin:base + end])
        dtype = _ST_TORCH[info["dtype"]]
        out[name] = torch.frombuffer(buf, dtype=dtype).reshape(info["shape"]) if buf else \
            torch.empty(info["shape"], dtype=dtype)
    return out


class RMSNorm(torch.nn.Module):
    def __init__(self, dim: int, device=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim, device=device))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Block(torch.nn.Module):
    """Gated MLP block: two Linears with bias (up, down), one without (gate)."""

    def __init__(self, dim: int, hidden: int, device=None):
        super().__init__()
        self.norm = RMSNorm(dim, device)
        self.up = torch.nn.Linear(dim, hidden, device=device)
        self.gate = torch.nn.Linear(dim, hidden, bias=False, device=device)
        self.down = torch.nn.Linear(hidden, dim, device=device)

    def forward(self, x):
        y = self.norm(x)
        return x + self.down(torch.nn.functional.silu(self.gate(y)) * self.up(y))


class BlockModel(torch.nn.Module):
    def __init__(self, dim: int, hidden: int, blocks: int, device=None):
        super().__init__()
        self.layers = torch.nn.ModuleList([Block(dim, hidden, device) for _ in range(blocks)])
        self.norm = RMSNorm(dim, device)
        self.lm_head = torch.nn.Linear(dim, dim, bias=False, device=device)  # float by default, as INC does

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


class TracedMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(TRACED_IN, TRACED_HIDDEN)
        self.fc2 = torch.nn.Linear(TRACED_HIDDEN, TRACED_IN)
        self.head = torch.nn.Linear(TRACED_IN, TRACED_OUT, bias=False)

    def forward(self, x):
        h = x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))
        # The parent uses the child's weight itself: traced as a GetAttr chain self.head.weight.
        return torch.nn.functional.linear(h, self.head.weight)


def init_(model, generator):
    """Deterministic weights whose scale keeps activations O(1) through the blocks."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=generator) / p.shape[1] ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))


def make_scripted(out: pathlib.Path, generator):
    real = BlockModel(SCRIPTED_DIM, SCRIPTED_HIDDEN, SCRIPTED_BLOCKS).eval()
    init_(real, generator)
    x = torch.randn(2, 5, SCRIPTED_DIM, generator=generator)
    with torch.no_grad():
        y = real(x)
    write_safetensors(out / "scripted.safetensors", dict(real.named_parameters()))
    # The archive holds only meta parameters: its size does not grow with the model.
    empty = BlockModel(SCRIPTED_DIM, SCRIPTED_HIDDEN, SCRIPTED_BLOCKS, device="meta").eval()
    torch.jit.script(empty).save(str(out / "scripted.pt"))
    torch.save({"x": x, "y": y}, out / "scripted_reference.pt")


def make_traced(out: pathlib.Path, generator):
    model = TracedMLP().eval()
    init_(model, generator)
    x = torch.randn(3, 7, TRACED_IN, generator=generator)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        y = model(x)
    traced.save(str(out / "traced.pt"))
    torch.save({"x": x, "y": y}, out / "traced_reference.pt")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=pathlib.Path, help="output directory (created)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)
    make_scripted(args.out, generator)
    make_traced(args.out, generator)


if __name__ == "__main__":
    main()
