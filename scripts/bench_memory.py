#!/usr/bin/python3
"""Peak-memory benchmark of layer-wise RTN (`lwq quantize --algo rtn`) on a large synthetic Llama.

Steps:
  1. scripts/export_llama.py --synthetic PRESET --dtype DTYPE --out DIR, unless DIR already holds a model;
  2. lwq quantize --model DIR/model.pt --weights DIR --algo rtn --dtype int4 --group-size 128 --out Q.pt
     --report R.json --threads N, with stderr piped (the tool then prints one line per finished layer with its
     VmRSS) while this script samples /proc/PID/status (RssAnon, RssFile, VmHWM) every --interval seconds and
     takes the true peak (ru_maxrss) from wait4;
  3. the verdicts against the issue's limit, 2 x the largest block's fp32 size + 0.5 GB (GB = 1e9 bytes):
     peak VmHWM (the peak RSS: anonymous plus file-backed pages such as the memory-mapped safetensors and the
     spilled packed weights) and, separately, the peak anonymous RSS; flatness: max - min of the per-layer RSS
     after the first block;
  4. one forward of a few tokens through Q.pt in this process (torch.ops.load_library), to prove it works;
  5. deletes Q.pt and, when this run exported it, DIR (unless --keep); the report Q.pt.report.json stays.

The summary is printed and, with --json FILE, written as JSON (with the per-layer lines and the RSS timeline).
Exit status 1 when the peak RSS (VmHWM) is over the limit or the forward fails.
The machine's page cache matters for the GB/s figure: a model that fits in RAM and was just exported is read from
the cache, a larger one from disk.
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GB = 1e9
MIB = 1 << 20
LAYER_LINE = re.compile(r"^\[layer (\d+)/(\d+)\] (\S+) .*RSS (\d+) MiB")
BLOCK_OF = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def proc_status(pid: int) -> Optional[Dict[str, int]]:
    """RssAnon, RssFile, VmRSS, VmHWM of a live process in bytes; None once it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("RssAnon", "RssFile", "VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return out if "VmHWM" in out else None


def block_fp32_bytes(cfg: dict) -> int:
    """fp32 bytes of one decoder block: q, k, v, o, gate, up, down and the two RMSNorm weights."""
    d, h = cfg["dim"], cfg["hidden_dim"]
    kv = d * cfg["n_kv_heads"] // cfg["n_heads"]
    params = d * d + 2 * kv * d + d * d + 3 * d * h + 2 * d
    return 4 * params


def stored_weight_bytes(model_dir: str) -> int:
    return sum(os.path.getsize(os.path.join(model_dir, f)) for f in os.listdir(model_dir)
               if f.endswith(".safetensors"))


def has_model(model_dir: str) -> bool:
    return all(os.path.isfile(os.path.join(model_dir, f)) for f in ("model.pt", "config.json"))


def mib(n: float) -> str:
    return f"{n / MIB:,.0f} MiB"


def gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


class Sampler(threading.Thread):
    """Polls /proc/PID/status until the process exits; keeps the maxima and a timeline."""

    def __init__(self, pid: int, interval: float, t0: float):
        super().__init__(daemon=True)
        self.pid, self.interval, self.t0 = pid, interval, t0
        self.peak_anon = self.peak_file = self.peak_hwm = 0
        self.timeline: List[list] = []  # [seconds, anon, file]
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            s = proc_status(self.pid)
            if s is None:
                break
            self.peak_anon = max(self.peak_anon, s.get("RssAnon", 0))
            self.peak_file = max(self.peak_file, s.get("RssFile", 0))
            self.peak_hwm = max(self.peak_hwm, s["VmHWM"])
            self.timeline.append([round(time.monotonic() - self.t0, 3), s.get("RssAnon", 0), s.get("RssFile", 0)])
            self.stop.wait(self.interval)


def export(args, model_dir: str) -> float:
    cmd = [sys.executable, os.path.join(HERE, "export_llama.py"), "--synthetic", args.preset, "--dtype", args.dtype,
           "--out", model_dir]
    if args.layers:
        cmd += ["--layers", str(args.layers)]
    print("$ " + " ".join(cmd), flush=True)
    t = time.monotonic()
    subprocess.run(cmd, check=True)
    return time.monotonic() - t


def quantize(args, model_dir: str, out: str, report: str) -> dict:
    cmd = [args.lwq, "quantize", "--model", os.path.join(model_dir, "model.pt"), "--weights", model_dir,
           "--algo", "rtn", "--dtype", "int4", "--group-size", "128", "--out", out, "--report", report,
           "--threads", str(args.threads)]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid, args.interval, t0)
    sampler.start()
    layers, other = [], []
    for line in proc.stderr:  # a pipe, not a terminal: one line per finished layer
        line = line.rstrip("\n")
        m = LAYER_LINE.match(line)
        if not m:
            other.append(line)
            print(line, flush=True)
            continue
        now = proc_status(proc.pid) or {}
        block = BLOCK_OF.search(m.group(3))
        layers.append({"i": int(m.group(1)), "n": int(m.group(2)), "name": m.group(3),
                       "block": int(block.group(1)) if block else None, "rss_mib": int(m.group(4)),
                       "anon": now.get("RssAnon"), "file": now.get("RssFile"),
                       "t": round(time.monotonic() - t0, 3)})
        if args.verbose or m.group(3).endswith("down_proj") or int(m.group(1)) == int(m.group(2)):
            print(f"  {line}   [anon {mib(now.get('RssAnon', 0))}, file {mib(now.get('RssFile', 0))}]", flush=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"lwq quantize failed with exit code {proc.returncode}:\n" + "\n".join(other[-20:]))
    with open(report) as f:
        totals = json.load(f)["totals"]
    return {"command": cmd, "wall_seconds": wall, "ru_maxrss": usage.ru_maxrss * 1024, "layers": layers,
            "stdout": stdout, "totals": totals, "sampled_peak_anon": sampler.peak_anon,
            "sampled_peak_file": sampler.peak_file, "sampled_peak_hwm": sampler.peak_hwm,
            "timeline": sampler.timeline}


def forward_check(args, out: str, vocab: int) -> dict:
    import torch
    torch.ops.load_library(args.ops)
    torch.set_num_threads(args.threads)
    t = time.monotonic()
    model = torch.jit.load(out)
    load_s = time.monotonic() - t
    tokens = torch.tensor([[1, 15, 300, 2047, 7]], dtype=torch.long)
    t = time.monotonic()
    with torch.no_grad():
        logits = model(tokens)
    fwd_s = time.monotonic() - t
    ok = (tuple(logits.shape) == (1, tokens.shape[1], vocab) and bool(torch.isfinite(logits).all())
          and float(logits.std()) > 0)
    result = {"tokens": tokens.tolist()[0], "logits_shape": list(logits.shape), "finite_and_varied": ok,
              "next_tokens": logits[0].argmax(-1).tolist(), "load_seconds": load_s, "forward_seconds": fwd_s,
              "python_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    del model, logits
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama-8gb", help="export_llama.py --synthetic preset (default llama-8gb)")
    p.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16"], help="storage dtype (default fp16)")
    p.add_argument("--layers", type=int, help="export_llama.py --layers (a smaller model for a quick try)")
    p.add_argument("--dir", required=True, help="model directory; exported there unless it holds a model")
    p.add_argument("--out", help="quantized archive (default DIR.q4.pt)")
    p.add_argument("--lwq", default=os.path.join(REPO, "build", "bin", "lwq"), help="the lwq tool")
    p.add_argument("--ops", help="liblwq_ops.so (default: next to --lwq, ../lib/liblwq_ops.so)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--interval", type=float, default=0.05, help="RSS sampling period in seconds (default 0.05)")
    p.add_argument("--no-forward", action="store_true", help="skip the forward through the quantized archive")
    p.add_argument("--keep", action="store_true", help="keep the quantized archive and the exported model")
    p.add_argument("--json", help="write the summary (with per-layer lines and the RSS timeline) here")
    p.add_argument("--verbose", action="store_true", help="echo every layer line (default: each block's last)")
    args = p.parse_args()
    args.dir = os.path.abspath(args.dir)
    out = os.path.abspath(args.out or args.dir.rstrip("/") + ".q4.pt")
    report = out + ".report.json"
    if args.ops is None:
        args.ops = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(args.lwq))), "lib", "liblwq_ops.so")
    for path in (args.lwq, args.ops):
        if not os.path.isfile(path):
            sys.exit(f"{path} not found (build lwq_cli and lwq_ops, or pass --lwq/--ops)")

    exported = not has_model(args.dir)
    export_s = export(args, args.dir) if exported else None
    with open(os.path.join(args.dir, "config.json")) as f:
        cfg = json.load(f)
    stored = stored_weight_bytes(args.dir)
    block = block_fp32_bytes(cfg)
    limit = 2 * block + 0.5 * GB

    q = quantize(args, args.dir, out, report)
    t = q["totals"]
    anon_peak = max(q["sampled_peak_anon"], t["peak_rss_anon_bytes"])
    hwm_peak = max(q["ru_maxrss"], t["peak_rss_bytes"])
    after_first = [l for l in q["layers"] if l["block"] is not None and l["block"] > 0]
    rss_after = [l["rss_mib"] * MIB for l in after_first]
    anon_after = [l["anon"] for l in after_first if l["anon"] is not None]
    per_block = {}
    for l in q["layers"]:
        if l["block"] is not None:
            per_block[l["block"]] = l  # the block's last finished linear
    seconds = t["seconds"]

    summary = {
        "model": {"preset": args.preset, "dtype": args.dtype, "dir": args.dir, "n_layers": cfg["n_layers"],
                  "dim": cfg["dim"], "hidden_dim": cfg["hidden_dim"], "vocab_size": cfg["vocab_size"],
                  "stored_weight_bytes": stored, "export_seconds": export_s},
        "largest_block_fp32_bytes": block, "limit_bytes": limit,
        "quantize": {k: q[k] for k in ("command", "wall_seconds", "ru_maxrss", "sampled_peak_anon",
                                       "sampled_peak_file", "sampled_peak_hwm")},
        "totals": t,
        "peak_anon_bytes": anon_peak, "peak_vmhwm_bytes": hwm_peak,
        "anon_verdict": "PASS" if anon_peak <= limit else "FAIL",
        "vmhwm_verdict": "PASS" if hwm_peak <= limit else "FAIL",
        "flatness_rss_bytes": (max(rss_after) - min(rss_after)) if rss_after else None,
        "flatness_anon_bytes": (max(anon_after) - min(anon_after)) if anon_after else None,
        "per_block": [{"block": b, "rss_mib": l["rss_mib"], "anon": l["anon"], "file": l["file"], "t": l["t"]}
                      for b, l in sorted(per_block.items())],
        "weights_gb_per_s": stored / seconds / GB,
        "output_bytes": os.path.getsize(out),
    }
    if q["timeline"]:  # the sample with the largest anon + file: what VmHWM is made of
        top = max(q["timeline"], key=lambda s: s[1] + s[2])
        summary["largest_sample"] = {"t": top[0], "anon": top[1], "file": top[2]}

    print()
    print(f"model: {args.preset} {args.dtype}, {cfg['n_layers']} blocks, {gb(stored)} of stored weights "
          f"({mib(stored)})" + (f", exported in {export_s:.0f} s" if export_s else ""))
    print(f"largest block fp32: {gb(block)} ({mib(block)}); limit 2x + 0.5 GB = {gb(limit)} ({mib(limit)})")
    print("per block (after its last linear):  block  VmRSS     anon      file      t")
    for b in summary["per_block"]:
        print(f"  {b['block']:>36}  {b['rss_mib']:>6} MiB {mib(b['anon'] or 0):>9} {mib(b['file'] or 0):>9} "
              f"{b['t']:7.1f} s")
    print(f"peak anonymous RSS: {gb(anon_peak)} ({mib(anon_peak)}; sampled {mib(q['sampled_peak_anon'])}, "
          f"report {mib(t['peak_rss_anon_bytes'])})  -> {summary['anon_verdict']}")
    print(f"peak VmHWM (anon + file-backed): {gb(hwm_peak)} ({mib(hwm_peak)}; ru_maxrss {mib(q['ru_maxrss'])}, "
          f"report {mib(t['peak_rss_bytes'])}; largest sampled file-backed {mib(q['sampled_peak_file'])})"
          f"  -> {summary['vmhwm_verdict']}")
    if "largest_sample" in summary:
        top = summary["largest_sample"]
        print(f"largest sampled anon + file: {mib(top['anon'] + top['file'])} at {top['t']:.1f} s "
              f"(anon {mib(top['anon'])}, file-backed {mib(top['file'])})")
    print(f"at the end: anon {mib(t['rss_anon_bytes_at_end'])}, file {mib(t['rss_file_bytes_at_end'])}; "
          f"packed bytes {mib(t['packed_bytes'])}, spilled {mib(t['packed_bytes_spilled'])}; "
          f"{os.path.basename(out)}: {mib(summary['output_bytes'])}")
    if rss_after:
        print(f"flatness after block 0: VmRSS max - min = {mib(summary['flatness_rss_bytes'])} "
              f"({mib(min(rss_after))} .. {mib(max(rss_after))})" +
              (f"; anon max - min = {mib(summary['flatness_anon_bytes'])} "
               f"({mib(min(anon_after))} .. {mib(max(anon_after))})" if anon_after else ""))
    print(f"time: {seconds:.1f} s in the tool ({q['wall_seconds']:.1f} s wall); "
          f"{summary['weights_gb_per_s'] * 1000:.1f} MB/s of stored weights read")

    if not args.no_forward:
        fwd = forward_check(args, out, cfg["vocab_size"])
        summary["forward"] = fwd
        print(f"forward through {os.path.basename(out)}: tokens {fwd['tokens']} -> logits {fwd['logits_shape']}, "
              f"finite and varied: {fwd['finite_and_varied']}, argmax {fwd['next_tokens']}; "
              f"load {fwd['load_seconds']:.1f} s, forward {fwd['forward_seconds']:.2f} s, "
              f"Python peak RSS {mib(fwd['python_peak_rss'])}")

    if args.json:
        full = dict(summary, layers=q["layers"], timeline=q["timeline"])
        with open(args.json, "w") as f:
            json.dump(full, f, indent=1)
            f.write("\n")
    if not args.keep:
        if os.path.exists(out):
            os.remove(out)
        if exported:
            shutil.rmtree(args.dir, ignore_errors=True)
            print(f"deleted {args.dir} and {out}")
        else:
            print(f"deleted {out} ({args.dir} existed before this run: kept)")
    failed = summary["vmhwm_verdict"] != "PASS" or (not args.no_forward and not summary["forward"]["finite_and_varied"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
