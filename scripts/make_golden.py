#!/usr/bin/env python3
"""Writes tests/golden/packed_v<N>.pt: a tiny TorchScript archive of PackedWeights in every dtype, with the inputs
and the outputs this version computes. Committed once per format version; tests/python/test_golden.py proves that
later builds still load it and give the same numbers (PyTorch's bc-test idea).

Usage: /usr/bin/python3 scripts/make_golden.py --lib build/lib/liblwq_ops.so [--out tests/golden/packed_v1.pt]
"""
import argparse
import pathlib

import torch

# (name, dtype, group_size, sym, act_order) — shapes are awkward on purpose (ragged groups, odd sizes).
CASES = [
    ("int8_pc", "int8", -1, True, False),
    ("int4_g32_asym", "int4", 32, False, False),
    ("int4_fullrange", "int4_fullrange", 16, True, False),
    ("int3_g16_actorder", "int3", 16, True, True),
    ("int2_g8_asym", "int2", 8, False, False),
    ("nf4_g32", "nf4", 32, True, False),
    ("fp4_pc", "fp4_e2m1", -1, True, False),
]
OUT_FEATURES, IN_FEATURES = 11, 44


class Golden(torch.nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(20261123)
        self.weights = {}
        for name, dtype, group_size, sym, act_order in CASES:
            w = torch.randn(OUT_FEATURES, IN_FEATURES, generator=gen)
            if act_order:
                # Round-trip a permuted-group layout through pack_weight.
                q, s, z, _ = torch.ops.lwq.unpack_weight(torch.ops.lwq.quantize_weight(w, dtype, group_size, sym))
                g_idx = (torch.randperm(IN_FEATURES, generator=gen) // group_size).to(torch.int32)
                packed = torch.ops.lwq.pack_weight(q, s, z, dtype, group_size, g_idx)
            else:
                packed = torch.ops.lwq.quantize_weight(w, dtype, group_size, sym)
            setattr(self, name, packed)
        self.register_buffer("x", torch.randn(3, IN_FEATURES, generator=gen))

    def forward(self, x):
        outs = [torch.ops.lwq.woq_linear(x, self.int8_pc, None),
                torch.ops.lwq.woq_linear(x, self.int4_g32_asym, None),
                torch.ops.lwq.woq_linear(x, self.int4_fullrange, None),
                torch.ops.lwq.woq_linear(x, self.int3_g16_actorder, None),
                torch.ops.lwq.woq_linear(x, self.int2_g8_asym, None),
                torch.ops.lwq.woq_linear(x, self.nf4_g32, None),
                torch.ops.lwq.woq_linear(x, self.fp4_pc, None)]
        return torch.stack(outs)

    @torch.jit.export
    def dequantized(self):
        return torch.stack([torch.ops.lwq.dequantize_weight(self.int8_pc),
                            torch.ops.lwq.dequantize_weight(self.int4_g32_asym),
                            torch.ops.lwq.dequantize_weight(self.int4_fullrange),
                            torch.ops.lwq.dequantize_weight(self.int3_g16_actorder),
                            torch.ops.lwq.dequantize_weight(self.int2_g8_asym),
                            torch.ops.lwq.dequantize_weight(self.nf4_g32),
                            torch.ops.lwq.dequantize_weight(self.fp4_pc)])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default="build/lib/liblwq_ops.so")
    ap.add_argument("--out", default="tests/golden/packed_v1.pt")
    args = ap.parse_args()
    torch.ops.load_library(args.lib)
    # The expected numbers travel inside the archive as buffers.
    eager = Golden()
    scripted = torch.jit.script(eager)
    expected_y = scripted(scripted.x)
    expected_w = scripted.dequantized()
    eager.register_buffer("expected_y", expected_y)
    eager.register_buffer("expected_w", expected_w)
    scripted = torch.jit.script(eager)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, args.out)
    print(f"wrote {args.out} ({pathlib.Path(args.out).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
