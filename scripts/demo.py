"""lwq demo: quantize a real trained Llama (llama2.c's stories260K) with the lwq operators and compare formats.

For each weight format every Linear inside the transformer blocks (not the embedding / classifier) is replaced by a
module calling torch.ops.lwq.woq_linear on a torch.ops.lwq.quantize_weight packed weight; the table shows the packed
size, the mean next-token NLL on TinyStories validation paragraphs and the greedy decode speed, each against fp32.
When the core library provides them, GPTQ and AWQ rows are added (calibrated on other paragraphs than the eval
ones). Finally one quantized model is scripted with TorchScript, saved, and reloaded in a fresh process.

Without ../shared/data only the TorchScript round trip runs, on a random-weight model (no quality figures).

Usage: /usr/bin/python3 scripts/demo.py [--data DIR] [--build DIR] [--segments N] [--threads N]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(SCRIPTS_DIR)
sys.path.insert(0, SCRIPTS_DIR)

import llama2c  # noqa: E402
import lwq_llama  # noqa: E402

# (label, dtype, group_size, sym): the round-to-nearest rows of the table.
RTN_FORMATS = [
    ("int8 per-channel sym", "int8", -1, True),
    ("int4 g32 sym", "int4", 32, True),
    ("int4 g32 asym", "int4", 32, False),
    ("int4 per-channel asym", "int4", -1, False),
    ("int3 g32 asym", "int3", 32, False),
    ("nf4 g32", "nf4", 32, True),
    ("fp4_e2m1 g32", "fp4_e2m1", 32, True),
]
SAMPLE_FORMAT = ("int4", 32, False)  # the model the greedy sample and the TorchScript round trip use
ALGO_NOTES = {
    "gptq_quantize": "damp 0.01, block 128, no act order",
    "awq_search": "20-point scale grid + clip search; 1/s folded into the RMSNorm weights before q/k/v_proj and "
                  "gate/up_proj, divided at run time before o_proj and down_proj",
}
CALIB_SEGMENTS = 128  # GPTQ / AWQ calibration: the LAST paragraphs of the file, disjoint from the eval ones


# ----------------------------------------------------------------------------------------------------------------
# Library and quantized modules


def load_lwq(build_dir: str) -> bool:
    """Loads liblwq_ops.so (required) and liblwq.so (optional algorithms). Returns whether the core is loaded."""
    ops = os.path.join(build_dir, "lib", "liblwq_ops.so")
    core = os.path.join(build_dir, "lib", "liblwq.so")
    if not os.path.exists(ops):
        sys.exit(f"demo: {ops} not found: build first (scripts/demo.sh does), or pass --build DIR")
    torch.ops.load_library(ops)
    if os.path.exists(core):
        torch.ops.load_library(core)
        return True
    return False


def has_op(name: str, schema_prefix: str) -> bool:
    """Whether torch.ops.lwq.<name> is registered with a schema starting as expected."""
    try:
        schema = str(getattr(torch.ops.lwq, name).default._schema)
    except (AttributeError, RuntimeError):
        return False
    return schema.startswith(schema_prefix)


class WoqLinear(nn.Module):
    """A Linear without bias running on a packed lwq weight. in_scale (AWQ, where the division could not be folded
    into the producer of x): the packed weight is of W diag(s), so the input is divided by s first."""

    in_scale: Optional[torch.Tensor]

    def __init__(self, packed, in_scale: Optional[torch.Tensor] = None):
        super().__init__()
        self.packed = packed
        self.in_scale = in_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_scale = self.in_scale
        if in_scale is not None:
            x = x / in_scale
        return torch.ops.lwq.woq_linear(x, self.packed, None)


LINEAR_NAMES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def block_linears(block: nn.Module) -> Dict[str, nn.Module]:
    return {name: block.get_submodule(name) for name in LINEAR_NAMES}


def set_linear(block: nn.Module, name: str, module: nn.Module) -> None:
    parent, attr = name.split(".")
    setattr(block.get_submodule(parent), attr, module)


def linear_fp32_bytes(model: lwq_llama.LlamaModel) -> int:
    return sum(m.weight.numel() * 4 for block in model.layers for m in block_linears(block).values())


def packed_bytes(model: nn.Module) -> int:
    return sum(m.packed.nbytes() for m in model.modules() if isinstance(m, WoqLinear))


def quantize_rtn(model: lwq_llama.LlamaModel, dtype: str, group_size: int, sym: bool) -> lwq_llama.LlamaModel:
    """model with every block Linear replaced in place by a round-to-nearest packed WoqLinear."""
    for block in model.layers:
        for name, lin in block_linears(block).items():
            set_linear(block, name, WoqLinear(torch.ops.lwq.quantize_weight(lin.weight.detach(), dtype,
                                                                             group_size, sym)))
    return model


# ----------------------------------------------------------------------------------------------------------------
# Calibration-based algorithms, block by block


class BlockInputs:
    """Hidden states entering one block for each calibration batch, with the mask of real (non-padding) tokens."""

    def __init__(self, model: lwq_llama.LlamaModel, sequences: Sequence[Sequence[int]]):
        self.model = model
        self.batches: List[Tuple[torch.Tensor, torch.Tensor]] = []
        with torch.no_grad():
            for indices in lwq_llama.length_batches(sequences):
                tokens, valid = lwq_llama.pad_batch([sequences[i] for i in indices])
                self.batches.append((model.embed_tokens(tokens), valid))

    def run(self, block: nn.Module) -> List[torch.Tensor]:
        outs = []
        with torch.no_grad():
            for h, _ in self.batches:
                T = h.shape[1]
                outs.append(block(h, self.model.rope_cos[:T], self.model.rope_sin[:T]))
        return outs

    def capture(self, block: nn.Module, linear: nn.Module) -> torch.Tensor:
        """Rows [n_real_tokens, in] of the input of `linear` when block runs on these inputs."""
        rows: List[torch.Tensor] = []
        masks = iter([v for _, v in self.batches])

        def hook(_module, args):
            rows.append(args[0][next(masks)])

        handle = linear.register_forward_pre_hook(hook)
        try:
            self.run(block)
        finally:
            handle.remove()
        return torch.cat(rows)

    def advance(self, block: nn.Module) -> None:
        """Moves to the next block: its inputs are this (already quantized) block's outputs."""
        self.batches = [(out, v) for out, (_, v) in zip(self.run(block), self.batches)]


# Linears sharing one input, in the order their inputs become available inside a block.
LINEAR_GROUPS = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                 ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
# Norm whose weight produces a group's input (AWQ folds 1/s there); other groups divide at run time.
GROUP_NORM = {"self_attn.q_proj": "input_layernorm", "mlp.gate_proj": "post_attention_layernorm"}


def quantize_sequential(model: lwq_llama.LlamaModel, calib: Sequence[Sequence[int]],
                        quantize_group: Callable[[nn.Module, List[str], torch.Tensor], None]) -> None:
    """Block by block, and inside a block group by group: the calibration inputs of a group are computed with every
    earlier linear already quantized (GPTQ's and AWQ's sequential mode)."""
    inputs = BlockInputs(model, calib)
    for block in model.layers:
        for group in LINEAR_GROUPS:
            x = inputs.capture(block, block.get_submodule(group[0]))
            quantize_group(block, group, x)
        inputs.advance(block)


def gptq_group(dtype: str, group_size: int, sym: bool):
    def run(block: nn.Module, names: List[str], x: torch.Tensor) -> None:
        # H = 2/n sum x^T x over the n calibration rows (the op keeps the running mean exact).
        hessian = torch.ops.lwq.gptq_hessian_add(torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64),
                                                 x.double(), 0)
        for name in names:
            w = block.get_submodule(name).weight.detach()
            packed = torch.ops.lwq.gptq_quantize(w, hessian, dtype, group_size, sym, 0.01, 128, False, False)
            set_linear(block, name, WoqLinear(packed))
    return run


def awq_group(dtype: str, group_size: int, sym: bool):
    def run(block: nn.Module, names: List[str], x: torch.Tensor) -> None:
        weights = [block.get_submodule(n).weight.detach() for n in names]
        scales, packed = torch.ops.lwq.awq_search(x, weights, dtype, group_size, sym, 20, True)
        norm_name = GROUP_NORM.get(names[0])
        if norm_name is not None:
            norm = block.get_submodule(norm_name)
            with torch.no_grad():
                norm.weight.div_(scales)
            in_scale = None
        else:
            in_scale = scales.clone()
        for name, p in zip(names, packed):
            set_linear(block, name, WoqLinear(p, in_scale))
    return run


# ----------------------------------------------------------------------------------------------------------------
# Measurements


def decode_tokens_per_s(model: nn.Module, n_tokens: int, repeats: int = 5) -> float:
    """Greedy tokens from BOS (one token per forward, KV cache) per second of this process's CPU time, best of
    `repeats`. CPU time rather than wall time: this runs on one thread, and the machines it is shown on are often
    shared, where wall time mostly measures the other jobs."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        out = lwq_llama.generate_greedy(model, n_tokens)
        best = min(best, time.process_time() - t0)
    return len(out) / best


def load_fp32(data_dir: str) -> Tuple[lwq_llama.LlamaModel, llama2c.Tokenizer]:
    model = llama2c.load_model(os.path.join(data_dir, "stories260K.bin"))
    tokenizer = llama2c.Tokenizer(os.path.join(data_dir, "tok512.bin"))
    return model, tokenizer


def format_table(rows: List[Dict[str, object]], fp32: Dict[str, object]) -> str:
    header = f"{'format':<24} {'linear bytes':>12} {'vs fp32':>8} {'mean NLL':>9} {'dNLL':>8} {'tok/s':>7} " \
             f"{'vs fp32':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['label']:<24} {r['bytes']:>12,} {r['bytes'] / fp32['bytes']:>7.3f}x "
                     f"{r['nll']:>9.4f} {r['nll'] - fp32['nll']:>+8.4f} {r['tps']:>7.0f} "
                     f"{r['tps'] / fp32['tps']:>7.2f}x")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# TorchScript round trip

_CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(int(sys.argv[4]))
    torch.ops.load_library(sys.argv[1])
    model = torch.jit.load(sys.argv[2])
    tokens, expected = torch.load(sys.argv[3])
    logits = model(tokens)
    same = torch.equal(logits, expected)
    print("identical" if same else "DIFFERENT max |diff| %g" % (logits - expected).abs().max().item())
    sys.exit(0 if same else 1)
""")


def torchscript_round_trip(model: nn.Module, tokens: torch.Tensor, build_dir: str, threads: int, what: str) -> bool:
    """Scripts `model`, saves it, reloads it in a fresh Python process that only loads liblwq_ops.so, and checks the
    logits there equal the eager model's here bit for bit."""
    scripted = torch.jit.script(model)
    with torch.no_grad():
        expected = model(tokens)
    with tempfile.TemporaryDirectory(prefix="lwq_demo_") as tmp:
        archive = os.path.join(tmp, "model.pt")
        io_file = os.path.join(tmp, "io.pt")
        scripted.save(archive)
        torch.save((tokens, expected), io_file)
        size = os.path.getsize(archive)
        ops = os.path.join(build_dir, "lib", "liblwq_ops.so")
        proc = subprocess.run([sys.executable, "-c", _CHILD, ops, archive, io_file, str(threads)],
                              capture_output=True, text=True)
    verdict = proc.stdout.strip() or proc.stderr.strip().splitlines()[-1]
    ok = proc.returncode == 0
    print(f"TorchScript: {what} scripted and saved ({size / 1024:.0f} KiB), reloaded in a fresh process after "
          f"load_library: logits on {tokens.shape[1]} tokens {'identical bit for bit' if ok else verdict}")
    if not ok and proc.stderr:
        print(proc.stderr, file=sys.stderr)
    return ok


# ----------------------------------------------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=llama2c.default_data_dir(), help="dir with stories260K.bin, tok512.bin, "
                   "tinystories_val.txt (default: <repo>/../shared/data)")
    p.add_argument("--build", default=os.path.join(REPO_DIR, "build"), help="lwq build dir (default: <repo>/build)")
    p.add_argument("--segments", type=int, default=200, help="eval paragraphs (the first N of tinystories_val.txt)")
    p.add_argument("--gen-tokens", type=int, default=64, help="tokens generated for the decode speed")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (the same for every row)")
    args = p.parse_args(argv)

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    has_core = load_lwq(args.build)
    model_file = os.path.join(args.data, "stories260K.bin")

    if not os.path.exists(model_file):
        print(f"demo: the real model is missing ({model_file} not found). The quality and speed table needs it "
              f"(pass --data DIR holding stories260K.bin, tok512.bin, tinystories_val.txt).")
        print("demo: running only the TorchScript round trip, on a small random-weight model (no quality figures).")
        cfg = lwq_llama.LlamaConfig(dim=64, hidden_dim=172, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=512,
                                    max_seq_len=128)
        model = quantize_rtn(lwq_llama.random_model(cfg, seed=0), *SAMPLE_FORMAT)
        tokens = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
        ok = torchscript_round_trip(model, tokens, args.build, args.threads, "random-weight int4 g32 asym model")
        print(f"demo: done in {time.perf_counter() - start:.1f} s")
        return 0 if ok else 1

    fp32_model, tokenizer = load_fp32(args.data)
    cfg_line = (f"model: stories260K ({sum(p.numel() for p in fp32_model.parameters()):,} parameters, "
                f"{len(fp32_model.layers)} blocks, dim {fp32_model.embed_tokens.embedding_dim}, vocab "
                f"{fp32_model.vocab_size}); {args.threads} thread(s)")
    text_file = os.path.join(args.data, "tinystories_val.txt")
    eval_seqs = llama2c.eval_sequences(tokenizer, llama2c.read_segments(text_file, args.segments),
                                       fp32_model.max_seq_len)
    n_eval_tokens = sum(len(s) - 1 for s in eval_seqs)
    print(cfg_line)
    print(f"eval: mean next-token NLL (nats) over the first {len(eval_seqs)} paragraphs of tinystories_val.txt "
          f"({n_eval_tokens:,} predicted tokens, BOS prepended)")
    print(f"decode: greedy, {args.gen_tokens} tokens from BOS; tok/s = tokens per CPU-second of this process, "
          f"best of 5")

    def measure(label: str, model: nn.Module, nbytes: int) -> Dict[str, object]:
        total, count = lwq_llama.sequence_nll(model, eval_seqs)
        return {"label": label, "bytes": nbytes, "nll": total / count,
                "tps": decode_tokens_per_s(model, args.gen_tokens)}

    rows = [measure("fp32", fp32_model, linear_fp32_bytes(fp32_model))]
    notes: List[str] = []
    for label, dtype, group_size, sym in RTN_FORMATS:
        model = quantize_rtn(load_fp32(args.data)[0], dtype, group_size, sym)
        rows.append(measure(label, model, packed_bytes(model)))

    calib = None
    algos = [("gptq int4 g32 asym", "gptq_quantize",
              "lwq::gptq_quantize(Tensor weight, Tensor hessian, str dtype, int group_size=128, bool sym=True, "
              "float percdamp=0.01, int block_size=128, bool act_order=False, bool static_groups=False)",
              gptq_group),
             ("awq int4 g32 asym", "awq_search",
              "lwq::awq_search(Tensor x, Tensor[] weights, str dtype, int group_size, bool sym, int n_grid=20, "
              "bool clip_search=True) -> (Tensor scales, __torch__.torch.classes.lwq.PackedWeight[] packed)",
              awq_group)]
    for label, op, schema, make_group in algos:
        if not has_core:
            notes.append(f"{label}: skipped, the core library {args.build}/lib/liblwq.so is not built")
            continue
        if not has_op(op, schema) or (op == "gptq_quantize" and not has_op("gptq_hessian_add", "lwq::")):
            notes.append(f"{label}: skipped, torch.ops.lwq.{op} is not registered with the expected schema")
            continue
        if calib is None:
            calib_segments = llama2c.read_segments(text_file, CALIB_SEGMENTS, last=True)
            calib = llama2c.eval_sequences(tokenizer, calib_segments, fp32_model.max_seq_len)
            n_calib = sum(len(s) for s in calib)
        t0 = time.perf_counter()
        model = load_fp32(args.data)[0]
        quantize_sequential(model, calib, make_group(*SAMPLE_FORMAT))
        seconds = time.perf_counter() - t0
        rows.append(measure(label, model, packed_bytes(model)))
        notes.append(f"{label}: calibrated on the last {CALIB_SEGMENTS} paragraphs ({n_calib:,} tokens), "
                     f"block by block, in {seconds:.1f} s; {ALGO_NOTES[op]}")

    print()
    print(format_table(rows, rows[0]))
    print("linear bytes: the 35 Linears inside the blocks (embedding and classifier stay fp32); "
          "packed = sum of PackedWeight.nbytes()")
    print("tok/s: at dim 64 a decode step is dominated by per-call overhead (one woq_linear call vs nn.Linear), "
          "not by the kernels; bench/ measures kernel throughput")
    for n in notes:
        print(n)

    int4_model = quantize_rtn(load_fp32(args.data)[0], *SAMPLE_FORMAT)
    sample = tokenizer.decode(lwq_llama.generate_greedy(int4_model, 48))
    print()
    print("greedy sample, int4 g32 asym (48 tokens from BOS):")
    print(textwrap.indent(textwrap.fill(sample, 100), "  "))
    print()
    tokens = torch.tensor([tokenizer.encode("Once upon a time, there was a little dog named Max.", bos=True)])
    ok = torchscript_round_trip(int4_model, tokens, args.build, args.threads, "int4 g32 asym stories260K")
    print(f"demo: done in {time.perf_counter() - start:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
