#!/usr/bin/python3
"""lwq demo: quantize a Llama with trained weights using the lwq tool, and compare the results with fp32.

The model: the real stories260K (llama2.c's tinyllamas) when ../shared/data holds it, otherwise a model of the same
shape that scripts/train_tiny_llama.py trains here in a few minutes (seeded) on the license texts every Debian
machine has (/usr/share/common-licenses). Either way it is exported with scripts/export_llama.py (lwq.export) and
then handled by the C++ tool alone (build/bin/lwq):

  lwq quantize  RTN, GPTQ and AWQ int4 (group 32, asymmetric) and W8A8 (int8 per channel, static int8 activations,
                SmoothQuant 0.5), layer by layer; the calibrated ones on text that the evaluation does not use
  lwq eval      mean next-token NLL on evaluation paragraphs, fp32 and each quantized model
  lwq generate  greedy decode speed (tokens/s from its statistics), then a sample from the GPTQ model

Finally this script loads build/lib/liblwq_ops.so with torch.ops.load_library, runs the quantized archive from
Python (a few greedy tokens through forward_cached) and checks that they are the C++ sample's first tokens.

Usage: /usr/bin/python3 scripts/demo.py [--no-shared-data] [--build DIR] [--threads N] ...  (--help)
scripts/demo.sh sets up and builds first.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(SCRIPTS_DIR)
sys.path.insert(0, os.path.join(REPO_DIR, "python"))

from lwq import llama2c  # noqa: E402
from lwq import tool as lwq_tool  # noqa: E402

GROUP = ["--dtype", "int4", "--group-size", "32", "--asym"]
# (label, file stem, lwq quantize options, calibrated)
METHODS = [
    ("RTN int4 g32 asym", "rtn", ["--algo", "rtn", *GROUP], False),
    ("RTN int4 g32 asym, int8 act.", "rtn_a8", ["--algo", "rtn", *GROUP, "--compute", "int8"], False),
    ("GPTQ int4 g32 asym", "gptq", ["--algo", "gptq", *GROUP], True),
    ("AWQ int4 g32 asym", "awq", ["--algo", "awq", *GROUP], True),
    ("W8A8 int8 SQ 0.5", "w8a8", ["--algo", "w8a8", "--dtype", "int8", "--group-size", "-1", "--smoothquant", "0.5"],
     True),
]
SAMPLE_METHOD = "gptq"  # the model of the C++ sample and the Python check
PYTHON_TOKENS = 12  # greedy tokens generated from Python
STORIES_EVAL_SEGMENTS = 600
STORIES_CALIB_SEGMENTS = 500  # the LAST paragraphs of tinystories_val.txt, far from the first 600
CALIB_WINDOWS = 64
SPEED_ROUNDS = 5


@dataclass
class DemoModel:
    name: str
    checkpoint: str  # llama2.c .bin
    tokenizer: str
    eval_text: str
    eval_segments: Optional[int]  # the first N paragraphs, or all
    eval_what: str
    eval_unit: str  # what one evaluation sequence is
    calib_text: str
    calib_what: str
    prompt: str
    about: str


def stories_model(data: str, work: str) -> DemoModel:
    text = os.path.join(data, "tinystories_val.txt")
    paragraphs = llama2c.read_segments(text)
    first_calib = len(paragraphs) - STORIES_CALIB_SEGMENTS
    if first_calib < STORIES_EVAL_SEGMENTS:
        sys.exit(f"demo: {text} has {len(paragraphs)} paragraphs, too few for {STORIES_EVAL_SEGMENTS} evaluation "
                 f"and {STORIES_CALIB_SEGMENTS} separate calibration paragraphs")
    calib = os.path.join(work, "stories_calib.txt")
    with open(calib, "w", encoding="utf-8") as f:
        f.write("\n\n".join(paragraphs[first_calib:]) + "\n")
    return DemoModel(
        name="stories260K", checkpoint=os.path.join(data, "stories260K.bin"),
        tokenizer=os.path.join(data, "tok512.bin"), eval_text=text, eval_segments=STORIES_EVAL_SEGMENTS,
        eval_what=f"the first {STORIES_EVAL_SEGMENTS} paragraphs of tinystories_val.txt", eval_unit="paragraphs",
        calib_text=calib, calib_what=f"paragraphs {first_calib + 1}-{len(paragraphs)} of tinystories_val.txt",
        prompt="Once upon a time",
        about=f"stories260K, the real trained Llama of {data} (llama2.c's tinyllamas)")


def trained_model(work: str, steps: Optional[int], threads: int, retrain: bool) -> DemoModel:
    out = os.path.join(work, "tiny-licenses")
    cmd = [sys.executable, os.path.join(SCRIPTS_DIR, "train_tiny_llama.py"), "--out", out, "--threads", str(threads)]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    if not retrain:
        cmd.append("--reuse")
    print("demo: no ../shared/data model in use: training a stories260K-shaped Llama on /usr/share/common-licenses "
          "(scripts/train_tiny_llama.py; a few minutes, or reused when already trained with the same settings)",
          flush=True)
    proc = subprocess.run(cmd)  # its progress goes straight to the terminal
    if proc.returncode != 0:
        sys.exit(f"demo: training failed (exit {proc.returncode}): {' '.join(cmd)}")
    with open(os.path.join(out, "train.json")) as f:
        info = json.load(f)
    corpus = info["corpus"]
    return DemoModel(
        name="tiny-licenses", checkpoint=os.path.join(out, "model.bin"), tokenizer=os.path.join(out, "tokenizer.bin"),
        eval_text=os.path.join(out, "heldout.txt"), eval_segments=None,
        eval_what=f"the {corpus['heldout_passages']} passages of {' and '.join(corpus['held_out'])}, held out "
                  f"of training", eval_unit="passages",
        calib_text=os.path.join(out, "calib.txt"), calib_what="a seeded sample of training passages",
        prompt="You may",
        about=f"a stories260K-shaped Llama trained here for {info['settings']['steps']} steps "
              f"({info['train_seconds']:.0f} s, seed {info['settings']['seed']}) on {corpus['train_tokens']:,} "
              f"tokens of license text; held-out NLL {info['heldout_nll']:.3f} nats/token against "
              f"{info['uniform_nll']:.3f} for a uniform guess")


# ----------------------------------------------------------------------------------------------------------------
# The tool


class Tool:
    """The lwq commands of the demo (a failing one raises lwq.tool.ToolError with its stderr)."""

    def __init__(self, build: str, threads: int):
        self.exe = str(lwq_tool.tool_path(build))
        self.threads = str(threads)

    def run(self, args: List[str]) -> subprocess.CompletedProcess:
        return lwq_tool.run(args, exe=self.exe)

    def quantize(self, model_dir: str, out: str, options: List[str], calib: Optional[List[str]]) -> Dict:
        report = out + ".report.json"
        self.run(["quantize", "--model", os.path.join(model_dir, "model.pt"), "--weights", model_dir, *options,
                  *(calib or []), "--out", out, "--report", report, "--threads", self.threads, "--quiet"])
        with open(report) as f:
            return json.load(f)

    def eval_nll(self, model: List[str], m: DemoModel) -> Dict:
        segments = ["--segments", str(m.eval_segments)] if m.eval_segments else []
        proc = self.run(["eval", *model, "--tokenizer", m.tokenizer, "--text", m.eval_text, *segments,
                         "--threads", self.threads, "--json"])
        return json.loads(proc.stdout)

    def decode_speed(self, model: List[str], m: DemoModel, steps: int) -> Tuple[float, int]:
        """Decode tokens/s and the number of one-token forwards of a greedy run of up to `steps` positions from BOS
        (from lwq generate's statistics; a run ends early if the model emits BOS)."""
        proc = self.run(["generate", *model, "--tokenizer", m.tokenizer, "--steps", str(steps),
                         "--no-stop-at-eos", "--threads", self.threads])
        found = re.search(r"decode ([0-9.eE+-]+) tokens/s \((\d+) one-token forwards", proc.stderr)
        if not found:
            sys.exit(f"demo: no decode rate in lwq generate's statistics: {proc.stderr.strip()}")
        return float(found.group(1)), int(found.group(2))

    def generate(self, model: List[str], m: DemoModel, steps: int) -> str:
        return self.run(["generate", *model, "--tokenizer", m.tokenizer, "--prompt", m.prompt, "--steps",
                         str(steps), "--threads", self.threads]).stdout


# ----------------------------------------------------------------------------------------------------------------
# Python side


@torch.no_grad()
def python_greedy(archive: str, prompt_ids: List[int], n_tokens: int) -> List[int]:
    """Greedy continuation of prompt_ids by the quantized archive loaded in this process: the prompt in one
    forward_cached call, then one token at a time (as lwq generate does)."""
    model = torch.jit.load(archive)
    cache = model.init_cache(1, len(prompt_ids) + n_tokens)
    logits = model.forward_cached(torch.tensor([prompt_ids]), 0, cache)
    out: List[int] = []
    for _ in range(n_tokens):
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        logits = model.forward_cached(torch.tensor([[nxt]]), len(prompt_ids) + len(out) - 1, cache)
    return out


def format_table(rows: List[Dict]) -> str:
    fp32 = rows[0]
    header = (f"{'format':<28} {'archive bytes':>13} {'linear bytes':>12} {'vs fp32':>7} {'NLL':>7} {'dNLL':>8} "
              f"{'quant s':>7} {'tok/s':>6} {'vs fp32':>7}")
    lines = [header, "-" * len(header)]
    for r in rows:
        quant = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        lines.append(f"{r['label']:<28} {r['archive']:>13,} {r['linear']:>12,} {r['linear'] / fp32['linear']:>6.3f}x "
                     f"{r['nll']:>7.4f} {r['nll'] - fp32['nll']:>+8.4f} {quant:>7} {r['tps']:>6.0f} "
                     f"{r['tps'] / fp32['tps']:>6.2f}x")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", default=str(lwq_tool.build_dir()),
                   help="lwq build dir (default: $LWQ_BUILD_DIR or <repo>/build)")
    p.add_argument("--data", default=os.path.normpath(os.path.join(REPO_DIR, "..", "shared", "data")),
                   help="dir with stories260K.bin, tok512.bin, tinystories_val.txt (default <repo>/../shared/data)")
    p.add_argument("--no-shared-data", action="store_true",
                   default=os.environ.get("LWQ_DEMO_NO_SHARED_DATA", "") not in ("", "0"),
                   help="train the fallback model even when --data holds stories260K (or LWQ_DEMO_NO_SHARED_DATA=1)")
    p.add_argument("--work", help="working directory for models and archives (default <build>/demo)")
    p.add_argument("--threads", type=int, default=1, help="threads of every lwq command (default 1)")
    p.add_argument("--train-steps", type=int, help="fallback model: training steps (default: the trainer's)")
    p.add_argument("--train-threads", type=int, default=1, help="fallback model: training threads (default 1)")
    p.add_argument("--retrain", action="store_true", help="fallback model: train again even if a matching one exists")
    args = p.parse_args(argv)

    start = time.perf_counter()
    work = os.path.abspath(args.work or os.path.join(args.build, "demo"))
    os.makedirs(work, exist_ok=True)
    tool = Tool(args.build, args.threads)
    ops_lib = os.path.join(args.build, "lib", "liblwq_ops.so")
    for needed in (tool.exe, ops_lib):
        if not os.path.exists(needed):
            sys.exit(f"demo: {needed} not found: build first (scripts/demo.sh does), or pass --build DIR")

    have_data = os.path.exists(os.path.join(args.data, "stories260K.bin"))
    if have_data and not args.no_shared_data:
        m = stories_model(args.data, work)
    else:
        if not have_data:
            print(f"demo: {args.data}/stories260K.bin not found")
        m = trained_model(work, args.train_steps, args.train_threads, args.retrain)

    fp32_dir = os.path.join(work, m.name, "fp32")
    lwq_tool.run([os.path.join(SCRIPTS_DIR, "export_llama.py"), "--llama2c", m.checkpoint, "--tokenizer", m.tokenizer,
                  "--out", fp32_dir, "--force", "--quiet"], exe=sys.executable)
    with open(os.path.join(fp32_dir, "config.json")) as f:
        config = json.load(f)
    seq_len = config["max_seq_len"]
    calib_seqlen = min(256, seq_len)
    calib = ["--calib", m.calib_text, "--tokenizer", m.tokenizer, "--seq-len", str(calib_seqlen),
             "--nsamples", str(CALIB_WINDOWS)]
    decode_steps = min(256, seq_len)

    print(f"model: {m.about}")
    print(f"       {config['n_parameters']:,} parameters: dim {config['dim']}, hidden {config['hidden_dim']}, "
          f"{config['n_layers']} blocks, {config['n_heads']}/{config['n_kv_heads']} heads, vocab "
          f"{config['vocab_size']}, context {seq_len}; exported to {fp32_dir}")
    print(f"eval:  lwq eval, mean next-token NLL (nats) on {m.eval_what}")
    print(f"calib: GPTQ, AWQ, W8A8 on {CALIB_WINDOWS} windows of {calib_seqlen} tokens from {m.calib_what}")
    print(f"speed: lwq generate, greedy decode of {decode_steps} positions, best of {SPEED_ROUNDS} rounds over the "
          f"models; {args.threads} thread(s)", flush=True)

    fp32_model = ["--model", os.path.join(fp32_dir, "model.pt"), "--weights", fp32_dir]
    fp32_archive = sum(os.path.getsize(os.path.join(fp32_dir, f)) for f in ("model.pt", "model.safetensors"))
    fp32_eval = tool.eval_nll(fp32_model, m)
    rows: List[Dict] = [{"label": "fp32", "archive": fp32_archive, "linear": None, "seconds": None,
                         "nll": fp32_eval["nll"], "model": fp32_model, "tps": 0.0}]
    archives: Dict[str, str] = {}
    for label, stem, options, calibrated in METHODS:
        out = os.path.join(work, m.name, f"{stem}.pt")
        report = tool.quantize(fp32_dir, out, options, calib if calibrated else None)
        totals = report["totals"]
        rows[0]["linear"] = totals["float_bytes"]  # the same linears in fp32
        archives[stem] = out
        model = ["--model", out]
        rows.append({"label": label, "archive": os.path.getsize(out), "linear": totals["packed_bytes"],
                     "seconds": totals["seconds"], "nll": tool.eval_nll(model, m)["nll"], "model": model,
                     "tps": 0.0})
        print(f"  {label}: quantized and evaluated", flush=True)
    # Rounds over all models, best per model: a busy phase of the machine then slows every model alike.
    for _ in range(SPEED_ROUNDS):
        for r in rows:
            tps, r["forwards"] = tool.decode_speed(r["model"], m, decode_steps)
            r["tps"] = max(r["tps"], tps)

    print()
    print(format_table(rows))
    counts = {r["forwards"] for r in rows}  # differ only if a model emits BOS early
    runs = (f"{counts.pop()} per run" if len(counts) == 1
            else "per run: " + ", ".join(f"{r['label']} {r['forwards']}" for r in rows))
    notes = [
        "archive bytes: what runs (fp32: model.pt + model.safetensors; quantized: the .pt lwq quantize wrote, with the "
        "embedding and the head in fp32)",
        f"linear bytes: the {len(report['layers'])} linears of the blocks (packed codes, scales, zero points)",
        f"NLL: over {fp32_eval['tokens']:,} predicted tokens in {fp32_eval['segments']} {m.eval_unit}, each "
        "scored on its own with BOS first",
        "quant s: lwq quantize's own time (its report's totals.seconds)",
        f"tok/s: one-token forwards per second ({runs}); at dim 64 a decode step is per-call overhead rather than "
        "kernel time (bench/ measures the kernels)",
    ]
    for note in notes:
        print(textwrap.fill(note, 115, subsequent_indent="  "))

    sample_archive = archives[SAMPLE_METHOD]
    sample_label = next(label for label, stem, _, _ in METHODS if stem == SAMPLE_METHOD)
    text = tool.generate(["--model", sample_archive], m, 64)
    print()
    print(f"C++ sample ({sample_label}, `lwq generate --prompt \"{m.prompt}\"`, greedy, 64 positions):")
    print(textwrap.indent(textwrap.fill(text.strip(), 100), "  "))

    torch.set_num_threads(args.threads)
    torch.ops.load_library(ops_lib)
    tokenizer = llama2c.Tokenizer(m.tokenizer)
    prompt_ids = tokenizer.encode(m.prompt, bos=True)
    ids = python_greedy(sample_archive, prompt_ids, PYTHON_TOKENS)
    printed = tokenizer.decode(prompt_ids[1:] + ids, as_printed=True)
    same = text.startswith(printed)
    print(f"Python (torch.ops.load_library({os.path.relpath(ops_lib, REPO_DIR)}), torch.jit.load, forward_cached), "
          f"{PYTHON_TOKENS} greedy tokens {ids}:")
    print(f"  {printed!r}: {'the same as' if same else 'DIFFERENT from'} the start of the C++ sample")
    print(f"demo: done in {time.perf_counter() - start:.0f} s")
    return 0 if same else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except lwq_tool.ToolError as e:
        sys.exit(f"demo: {e}")
