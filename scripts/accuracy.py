#!/usr/bin/python3
"""Accuracy of lwq's quantization formats and algorithms on the real stories260K Llama, measured with the lwq tool
end to end (export, `lwq quantize`, `lwq eval`, `lwq generate`): the figures of docs/accuracy.md.

Protocol (docs/evaluation.md): mean next-token NLL in nats/token over the FIRST 600 blank-line separated paragraphs
of tinystories_val.txt, each with BOS and scored on its own. Calibrated rows (GPTQ, AWQ, TEQ, W8A8) calibrate on the
LAST 2000 lines of the same file, written to OUT/calib.txt (--study also uses the 2000 lines before those, and the
2000 before those); the script checks that every slice starts after the end of the 600th paragraph, so calibration
and evaluation text do not overlap. `lwq quantize` runs layer-wise (its default); each row's time is the report's
totals.seconds, its linear sizes the report's packed_bytes and float_bytes.

Usage: /usr/bin/python3 scripts/accuracy.py [--build-dir B] [--data-dir D] [--out-dir O] [--threads N]
                                            [--markdown docs/accuracy.md] [--study] [--only REGEX]
With --markdown FILE: if FILE holds the markers <!-- accuracy:begin --> and <!-- accuracy:end -->, the text
between them is replaced by the generated tables (the rest of the document is left alone); otherwise FILE is
written with the tables alone.
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(SCRIPTS_DIR)
sys.path.insert(0, os.path.join(REPO_DIR, "python"))

from lwq import tool as lwq_tool  # noqa: E402

SEGMENTS = 600           # evaluation paragraphs: the first 600 (docs/evaluation.md's reference protocol)
CALIB_LINES = 2000       # calibration text: the last 2000 lines of the file
BEGIN, END = "<!-- accuracy:begin -->", "<!-- accuracy:end -->"

RTN_REF = "rtn-int4-g32-asym"  # the row whose ΔNLL the int4 g32 rows are compared to

# One row: key, label, `lwq quantize` options (None: the fp32 model), the calibration text (None: not calibrated;
# "a": the default, the last 2000 lines; "b", "c": --study slices), and whether the ratio of its ΔNLL to RTN int4
# g32 asym's is shown (weight-only int4 group 32 asymmetric rows).
MAIN_ROWS = [
    ("fp32", "fp32", None, None, False),
    ("rtn-int8-pc-sym", "RTN int8 per channel sym", ["--algo", "rtn", "--dtype", "int8", "--group-size", "-1",
                                                     "--sym"], None, False),
    ("rtn-int8-pc-asym", "RTN int8 per channel asym", ["--algo", "rtn", "--dtype", "int8", "--group-size", "-1",
                                                       "--asym"], None, False),
    ("rtn-int4-g32-sym", "RTN int4 g32 sym", ["--algo", "rtn", "--dtype", "int4", "--group-size", "32", "--sym"],
     None, False),
    (RTN_REF, "RTN int4 g32 asym", ["--algo", "rtn", "--dtype", "int4", "--group-size", "32", "--asym"], None, True),
    ("rtn-int4-g64-asym", "RTN int4 g64 asym", ["--algo", "rtn", "--dtype", "int4", "--group-size", "64", "--asym"],
     None, False),
    ("rtn-int4-pc-asym", "RTN int4 per channel asym", ["--algo", "rtn", "--dtype", "int4", "--group-size", "-1",
                                                       "--asym"], None, False),
    ("rtn-mse-int4-g32-asym", "RTN int4 g32 asym, MSE clip search",
     ["--algo", "rtn", "--dtype", "int4", "--group-size", "32", "--asym", "--mse-search"], None, True),
    ("rtn-int3-g32-asym", "RTN int3 g32 asym", ["--algo", "rtn", "--dtype", "int3", "--group-size", "32", "--asym"],
     None, False),
    ("rtn-nf4-g32", "RTN nf4 g32", ["--algo", "rtn", "--dtype", "nf4", "--group-size", "32"], None, False),
    ("rtn-fp4-g32", "RTN fp4_e2m1 g32", ["--algo", "rtn", "--dtype", "fp4_e2m1", "--group-size", "32"], None,
     False),
    ("gptq-int4-g32-asym", "GPTQ int4 g32 asym", ["--algo", "gptq", "--dtype", "int4", "--group-size", "32",
                                                  "--asym"], "a", True),
    ("gptq-ao-int4-g32-asym", "GPTQ int4 g32 asym, act-order",
     ["--algo", "gptq", "--dtype", "int4", "--group-size", "32", "--asym", "--act-order"], "a", True),
    ("awq-int4-g32-asym", "AWQ int4 g32 asym", ["--algo", "awq", "--dtype", "int4", "--group-size", "32", "--asym"],
     "a", True),
    ("teq-int4-g32-asym", "TEQ int4 g32 asym", ["--algo", "teq", "--dtype", "int4", "--group-size", "32", "--asym"],
     "a", True),
    ("w8a8-minmax", "W8A8 minmax (uint8 act.)", ["--algo", "w8a8", "--dtype", "int8", "--group-size", "-1"], "a",
     False),
    ("w8a8-minmax-sq", "W8A8 minmax + SmoothQuant 0.5",
     ["--algo", "w8a8", "--dtype", "int8", "--group-size", "-1", "--smoothquant", "0.5"], "a", False),
]

# --study: what moves AWQ's (and TEQ's) figure: AWQ's options, the calibration text (slices b and c: the 2000 lines
# before the default slice, and the 2000 before those), and the group size, against RTN with the same format.
W4 = ["--dtype", "int4", "--group-size", "32", "--asym"]
STUDY_ROWS = [
    ("awq-g32-n128", "AWQ g32, --nsamples 128", ["--algo", "awq", *W4, "--nsamples", "128"], "a", True),
    ("awq-g32-n256", "AWQ g32, --nsamples 256", ["--algo", "awq", *W4, "--nsamples", "256"], "a", True),
    ("awq-g32-n32-s512", "AWQ g32, --nsamples 32 --seqlen 512",
     ["--algo", "awq", *W4, "--nsamples", "32", "--seqlen", "512"], "a", True),
    ("awq-g32-noclip", "AWQ g32, --no-clip-search", ["--algo", "awq", *W4, "--no-clip-search"], "a", True),
    ("awq-g32-grid40", "AWQ g32, --awq-grid 40", ["--algo", "awq", *W4, "--awq-grid", "40"], "a", True),
    ("awq-g32-n128-grid40", "AWQ g32, --nsamples 128 --awq-grid 40",
     ["--algo", "awq", *W4, "--nsamples", "128", "--awq-grid", "40"], "a", True),
    ("awq-g32-calib-b", "AWQ g32, calibration slice b", ["--algo", "awq", *W4], "b", True),
    ("awq-g32-calib-c", "AWQ g32, calibration slice c", ["--algo", "awq", *W4], "c", True),
    ("gptq-g32-calib-b", "GPTQ g32, calibration slice b", ["--algo", "gptq", *W4], "b", True),
    ("gptq-g32-calib-c", "GPTQ g32, calibration slice c", ["--algo", "gptq", *W4], "c", True),
    ("teq-g32-calib-b", "TEQ g32, calibration slice b", ["--algo", "teq", *W4], "b", True),
    ("teq-g32-calib-c", "TEQ g32, calibration slice c", ["--algo", "teq", *W4], "c", True),
    ("teq-g32-steps200", "TEQ g32, --teq-steps 200", ["--algo", "teq", *W4, "--teq-steps", "200"], "a", True),
    ("awq-g32-sym", "AWQ g32 sym", ["--algo", "awq", "--dtype", "int4", "--group-size", "32", "--sym"], "a", False),
    ("rtn-int4-g128-asym", "RTN int4 g128 asym", ["--algo", "rtn", "--dtype", "int4", "--group-size", "128",
                                                  "--asym"], None, False),
    ("awq-g64", "AWQ g64 asym", ["--algo", "awq", "--dtype", "int4", "--group-size", "64", "--asym"], "a", False),
    ("awq-g128", "AWQ g128 asym", ["--algo", "awq", "--dtype", "int4", "--group-size", "128", "--asym"], "a",
     False),
    ("awq-pc", "AWQ per channel asym", ["--algo", "awq", "--dtype", "int4", "--group-size", "-1", "--asym"], "a",
     False),
    ("gptq-g64", "GPTQ g64 asym", ["--algo", "gptq", "--dtype", "int4", "--group-size", "64", "--asym"], "a",
     False),
    ("gptq-pc", "GPTQ per channel asym", ["--algo", "gptq", "--dtype", "int4", "--group-size", "-1", "--asym"], "a",
     False),
]
# The RTN row a study row is compared with when it is not int4 g32 asym (same dtype, group size and symmetry).
STUDY_BASELINE = {"awq-g32-sym": "rtn-int4-g32-sym", "awq-g64": "rtn-int4-g64-asym", "gptq-g64": "rtn-int4-g64-asym",
                  "awq-g128": "rtn-int4-g128-asym", "awq-pc": "rtn-int4-pc-asym", "gptq-pc": "rtn-int4-pc-asym"}

# Decode speed: these rows' models generate 256 positions greedily from BOS on one thread.
SPEED_ROWS = ["fp32", "rtn-int8-pc-sym", RTN_REF, "w8a8-minmax"]

# The targets: (description, check on the results) -> held / missed.
TARGETS = [
    ("RTN int8 per channel (sym and asym): ΔNLL ≤ 0.002", ["rtn-int8-pc-sym", "rtn-int8-pc-asym"],
     lambda r: max(r["rtn-int8-pc-sym"]["delta"], r["rtn-int8-pc-asym"]["delta"]) <= 0.002),
    ("GPTQ int4 g32 asym: ΔNLL ≤ 0.7 × RTN's", [RTN_REF, "gptq-int4-g32-asym"],
     lambda r: r["gptq-int4-g32-asym"]["ratio"] <= 0.7),
    ("AWQ int4 g32 asym: ΔNLL ≤ 0.7 × RTN's", [RTN_REF, "awq-int4-g32-asym"],
     lambda r: r["awq-int4-g32-asym"]["ratio"] <= 0.7),
    ("TEQ int4 g32 asym: ΔNLL ≤ 0.7 × RTN's", [RTN_REF, "teq-int4-g32-asym"],
     lambda r: r["teq-int4-g32-asym"]["ratio"] <= 0.7),
    ("W8A8 (with or without SmoothQuant): ΔNLL ≤ 0.02", ["w8a8-minmax", "w8a8-minmax-sq"],
     lambda r: min(r["w8a8-minmax"]["delta"], r["w8a8-minmax-sq"]["delta"]) <= 0.02),
]


def log(msg: str) -> None:
    print(f"accuracy: {msg}", file=sys.stderr, flush=True)


class Tool:
    """Runs the lwq binary; a failing command ends the script with its stderr."""

    def __init__(self, build_dir: str, threads: int):
        self.lwq = str(lwq_tool.tool_path(build_dir))
        if not os.path.exists(self.lwq):
            sys.exit(f"accuracy: {self.lwq} not found: build the lwq_cli target first, or pass --build-dir")
        self.threads = threads

    def run(self, args: List[str]) -> subprocess.CompletedProcess:
        try:
            return lwq_tool.run(args, exe=self.lwq)
        except lwq_tool.ToolError as e:
            sys.exit(f"accuracy: {e}")

    def eval_nll(self, model_args: List[str], tokenizer: str, text: str) -> Dict[str, float]:
        proc = self.run(["eval", *model_args, "--tokenizer", tokenizer, "--text", text, "--segments", str(SEGMENTS),
                         "--threads", str(self.threads), "--json"])
        return json.loads(proc.stdout)

    def decode_rate(self, model_args: List[str], tokenizer: str, repeats: int) -> float:
        """Best decode rate (tokens/s, stderr of `lwq generate`) over `repeats` runs of 256 greedy positions."""
        best = 0.0
        for _ in range(repeats):
            proc = self.run(["generate", *model_args, "--tokenizer", tokenizer, "--temperature", "0", "--steps",
                             "256", "--threads", "1"])
            m = re.search(r"decode ([0-9.]+) tokens/s", proc.stderr)
            if m is None:
                sys.exit(f"accuracy: no decode rate in lwq generate's stderr:\n{proc.stderr}")
            best = max(best, float(m.group(1)))
        return best


def write_calibration(text_file: str, out_dir: str) -> Dict[str, Dict[str, object]]:
    """Calibration slices of CALIB_LINES lines each, counted from the end of text_file: "a" the last ones, "b" the ones
    before, "c" the ones before those, written to OUT/calib[-b|-c].txt. Refuses a slice reaching into the first
    SEGMENTS paragraphs (the evaluation text)."""
    with open(text_file, encoding="utf-8") as f:
        lines = f.read().replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline ending the file
    # The line (0-based) where the SEGMENTS-th non-empty paragraph ends, paragraphs being separated by blank lines.
    seen, in_paragraph, eval_end = 0, False, None
    for i, line in enumerate(lines):
        if line.strip():
            if not in_paragraph:
                seen += 1
                in_paragraph = True
            if seen == SEGMENTS:
                eval_end = i
        else:
            in_paragraph = False
        if seen > SEGMENTS:
            break
    slices: Dict[str, Dict[str, object]] = {}
    for k, name in enumerate("abc"):
        first = len(lines) - (k + 1) * CALIB_LINES
        if eval_end is None or first <= eval_end:
            sys.exit(f"accuracy: {text_file} is too short: calibration slice {name} (the {CALIB_LINES} lines "
                     f"{k * CALIB_LINES} lines before its end) overlaps the first {SEGMENTS} paragraphs used for "
                     f"evaluation")
        path = os.path.join(out_dir, "calib.txt" if name == "a" else f"calib-{name}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines[first:first + CALIB_LINES]) + "\n")
        slices[name] = {"path": path, "first_line": first + 1, "last_line": first + CALIB_LINES}
    return {"eval_last_line": eval_end + 1, "total_lines": len(lines), "slices": slices}


def machine_description() -> Dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", REPO_DIR, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": cpu, "cores": str(os.cpu_count()), "os": platform.platform(), "commit": commit,
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M %Z").strip(),
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg())}


def fmt_bytes(n: int) -> str:
    return f"{n:,}"


def table(rows: List[Dict[str, object]], baseline_col: Optional[Dict[str, str]] = None) -> List[str]:
    """Markdown table of measured rows. baseline_col: row key -> key of the RTN row to divide ΔNLL by."""
    out = ["| format | NLL | ΔNLL vs fp32 | ΔNLL / RTN | archive .pt bytes | packed / float linear bytes | "
           "quantize s |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = ""
        if r.get("ratio") is not None:
            ratio = f"{r['ratio']:.2f}x"
        if r["key"] == "fp32":
            delta, size, packed, secs = "", fmt_bytes(r["pt_bytes"]) + " + weights", "", ""
        else:
            delta = f"{r['delta']:+.4f}"
            size = fmt_bytes(r["pt_bytes"])
            packed = f"{fmt_bytes(r['packed_bytes'])} / {fmt_bytes(r['float_bytes'])} " \
                     f"({r['packed_bytes'] / r['float_bytes']:.3f})"
            secs = f"{r['seconds']:.1f}"
        out.append(f"| {r['label']} | {r['nll']:.5f} | {delta} | {ratio} | {size} | {packed} | {secs} |")
    return out


def layer_table(rows: List[Dict[str, object]]) -> List[str]:
    """Per-linear output error on the calibration data relative to RTN's (from the --report of each row)."""
    out = ["| format | layers | median | min | max | layers worse than RTN |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        v = r.get("layer_ratios") or []
        if not v:
            continue
        median = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
        out.append(f"| {r['label']} | {len(v)} | {median:.2f} | {v[0]:.2f} | {v[-1]:.2f} | "
                   f"{sum(1 for x in v if x > 1)} |")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build-dir", default=os.path.join(REPO_DIR, "build"), help="lwq build dir (default: build)")
    p.add_argument("--data-dir", default=os.path.normpath(os.path.join(REPO_DIR, "..", "shared", "data")),
                   help="stories260K.bin, tok512.bin, tinystories_val.txt (default: ../shared/data)")
    p.add_argument("--out-dir", help="where the exported and quantized models go (default: a temporary directory, "
                   "removed at the end)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of lwq quantize and lwq eval "
                   "(default 1: on a shared machine more threads than free cores is much slower); decode speed "
                   "always uses 1")
    p.add_argument("--markdown", help="write the tables into this file (between the accuracy markers if present)")
    p.add_argument("--study", action="store_true", help="also the rows studying AWQ, TEQ and GPTQ: options, "
                   "calibration slices, group sizes")
    p.add_argument("--teq-steps", type=int, default=1000, help="TEQ Adam steps per group (default 1000, the tool's)")
    p.add_argument("--speed-repeats", type=int, default=5, help="lwq generate runs per speed row (best is kept)")
    p.add_argument("--no-speed", action="store_true", help="skip the decode speed table")
    p.add_argument("--only", help="regex: only the rows whose key matches (fp32 always runs)")
    args = p.parse_args(argv)

    data = {name: os.path.join(args.data_dir, name) for name in ("stories260K.bin", "tok512.bin",
                                                                  "tinystories_val.txt")}
    for path in data.values():
        if not os.path.exists(path):
            sys.exit(f"accuracy: {path} not found (pass --data-dir DIR holding stories260K.bin, tok512.bin and "
                     f"tinystories_val.txt)")
    tool = Tool(args.build_dir, args.threads)
    tokenizer, text = data["tok512.bin"], data["tinystories_val.txt"]
    machine = machine_description()

    tmp = None
    if args.out_dir:
        out_dir = os.path.abspath(args.out_dir)
        os.makedirs(out_dir, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="lwq_accuracy_")
        out_dir = tmp.name

    start = time.perf_counter()
    model_dir = os.path.join(out_dir, "stories260K")
    subprocess.run([sys.executable, os.path.join(SCRIPTS_DIR, "export_llama.py"), "--llama2c",
                    data["stories260K.bin"], "--out", model_dir, "--force", "--quiet"], check=True)
    model_pt, weights = os.path.join(model_dir, "model.pt"), os.path.join(model_dir, "model.safetensors")
    split = write_calibration(text, out_dir)
    slices = split["slices"]
    log(f"evaluation: paragraphs 1..{SEGMENTS} (lines 1..{split['eval_last_line']}); calibration: lines "
        + ", ".join(f"{v['first_line']}..{v['last_line']} ({k})" for k, v in slices.items()))

    specs = list(MAIN_ROWS) + (STUDY_ROWS if args.study else [])
    only = re.compile(args.only) if args.only else None
    results: Dict[str, Dict[str, object]] = {}
    for key, label, opts, calibrated, show_ratio in specs:
        if only is not None and key != "fp32" and not only.search(key):
            continue
        row: Dict[str, object] = {"key": key, "label": label, "options": opts, "show_ratio": show_ratio}
        if opts is None:
            row["model_args"] = ["--model", model_pt, "--weights", weights]
            row["pt_bytes"] = os.path.getsize(model_pt)
        else:
            q_pt = os.path.join(out_dir, key + ".pt")
            report = os.path.join(out_dir, key + ".json")
            extra = ["--calib", slices[calibrated]["path"], "--tokenizer", tokenizer] if calibrated else []
            if opts[1] == "teq" and "--teq-steps" not in opts:
                extra += ["--teq-steps", str(args.teq_steps)]
            log(f"{key}: lwq quantize {' '.join(opts + (['--calib', '...'] if calibrated else []))}")
            tool.run(["quantize", "--model", model_pt, "--weights", weights, *opts, *extra, "--out", q_pt,
                      "--report", report, "--threads", str(args.threads), "--quiet"])
            with open(report) as f:
                rep = json.load(f)
            totals = rep["totals"]
            # Calibrated weight-only rows: each linear's output error on the calibration inputs relative to plain
            # RTN's on the same inputs (both in the report).
            layer_ratios = sorted(l["output_mse"] / l["rtn_output_mse"] for l in rep["layers"]
                                  if l.get("output_mse") is not None and l.get("rtn_output_mse"))
            row.update(model_args=["--model", q_pt], pt_bytes=os.path.getsize(q_pt),
                       packed_bytes=totals["packed_bytes"], float_bytes=totals["float_bytes"],
                       seconds=totals["seconds"], layer_ratios=layer_ratios if opts[1] != "w8a8" else [])
        ev = tool.eval_nll(row["model_args"], tokenizer, text)
        row.update(nll=ev["nll"], tokens=ev["tokens"])
        results[key] = row
        log(f"{key}: NLL {ev['nll']:.5f}" + (f" in {row['seconds']:.1f} s" if "seconds" in row else ""))

    fp32 = results["fp32"]["nll"]
    for key, row in results.items():
        row["delta"] = row["nll"] - fp32
        base = STUDY_BASELINE.get(key, RTN_REF)
        row["ratio"] = None
        if key != "fp32" and base in results and (row["show_ratio"] or key in STUDY_BASELINE):
            row["ratio"] = row["delta"] / results[base]["delta"]

    speed: Dict[str, float] = {}
    if not args.no_speed:
        for key in SPEED_ROWS:
            if key in results:
                speed[key] = tool.decode_rate(results[key]["model_args"], tokenizer, args.speed_repeats)
                log(f"{key}: decode {speed[key]:.0f} tokens/s")
    elapsed = time.perf_counter() - start
    machine["load_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())

    lines = [f"Generated by `scripts/accuracy.py{' --study' if args.study else ''} --threads {args.threads}"
             f"{'' if args.teq_steps == 1000 else f' --teq-steps {args.teq_steps}'}` on {machine['date']}, commit "
             f"{machine['commit']}, in {elapsed / 60:.1f} min. Machine: {machine['cpu']}, {machine['cores']} cores, "
             f"{machine['os']}; load average {machine['load']} at the start and {machine['load_end']} at the end "
             f"(a load above the core count means other jobs shared the machine: times are then indicative).",
             "",
             f"Evaluation: the first {SEGMENTS} paragraphs of tinystories_val.txt "
             f"({results['fp32']['tokens']:,} predicted tokens, lines 1..{split['eval_last_line']} of "
             f"{split['total_lines']}). Calibration (GPTQ, AWQ, TEQ, W8A8): its last {CALIB_LINES} lines "
             f"({slices['a']['first_line']}..{slices['a']['last_line']}), BOS + each paragraph concatenated and cut "
             f"into 64 windows of 256 tokens (the tool's defaults) unless the row says otherwise; calibration and "
             f"evaluation text do not overlap.",
             ""]
    main_keys = [k for k, *_ in MAIN_ROWS if k in results]
    lines += table([results[k] for k in main_keys])
    lines += ["",
              "ΔNLL / RTN: the row's ΔNLL divided by RTN int4 g32 asym's. Archive: the quantized TorchScript file "
              "(embedding and output head stay fp32 in it; fp32's is the meta-parameter archive, its weights are "
              "in model.safetensors). Packed / float linear bytes: the report's totals for the 35 quantized linears "
              "(packed weights with their scales and zero points, against their fp32 size)."]
    present = [t for t in TARGETS if all(k in results for k in t[1])]
    if present:
        lines += ["", "| target | measured | held |", "|---|---|---|"]
        for desc, keys, check in present:
            measured = ", ".join(
                f"{results[k]['label']}: {results[k]['delta']:+.4f}" +
                (f" ({results[k]['ratio']:.2f}x)" if results[k].get("ratio") is not None else "") for k in keys)
            lines.append(f"| {desc} | {measured} | {'yes' if check(results) else '**no**'} |")
    calibrated = [results[k] for k in main_keys if results[k].get("layer_ratios")]
    if calibrated:
        lines += ["", "Per-linear output error of the calibrated weight-only rows on their calibration inputs, "
                      "relative to plain RTN's on the same inputs (`output_mse / rtn_output_mse` of each layer in the "
                      "--report; 35 linears):", ""]
        lines += layer_table(calibrated)
    study_keys = [k for k, *_ in STUDY_ROWS if k in results]
    if study_keys:
        lines += ["", "Study (`--study`): AWQ's options, other calibration slices (b: lines "
                      f"{slices['b']['first_line']}..{slices['b']['last_line']}, c: lines {slices['c']['first_line']}.."
                      f"{slices['c']['last_line']}), other group sizes. ΔNLL / RTN: against RTN int4 g32 asym, or "
                      "RTN with the row's group size and symmetry.", ""]
        lines += table([results[k] for k in study_keys])
        if any(results[k].get("layer_ratios") for k in study_keys):
            lines += ["", "Per-linear output error of the study rows relative to plain RTN's with the same format, on "
                          "their calibration inputs:", ""]
            lines += layer_table([results[k] for k in study_keys])
    if speed:
        lines += ["", f"Decode speed: `lwq generate --temperature 0 --steps 256 --threads 1` from BOS, the decode "
                      f"rate it prints on stderr, best of {args.speed_repeats} runs.", "",
                  "| model | tokens/s | vs fp32 |", "|---|---:|---:|"]
        for key, rate in speed.items():
            ref = speed.get("fp32")
            lines.append(f"| {results[key]['label']} | {rate:,.0f} | "
                         f"{f'{rate / ref:.2f}x' if ref else ''} |")
    block = "\n".join(lines)
    print(block)

    with open(os.path.join(out_dir, "results.json") if args.out_dir else os.devnull, "w") as f:
        json.dump({"machine": machine, "split": split, "rows": results, "decode_tokens_per_s": speed}, f, indent=1,
                  default=str)
    if args.markdown:
        write_markdown(args.markdown, block)
    if tmp is not None:
        tmp.cleanup()
    return 0


def write_markdown(path: str, block: str) -> None:
    """Replaces the text between the markers of `path`, or writes the block alone; atomically."""
    body = block + "\n"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
        if BEGIN in old and END in old:
            head, rest = old.split(BEGIN, 1)
            body = head + BEGIN + "\n" + block + "\n" + END + rest.split(END, 1)[1]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(body)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
