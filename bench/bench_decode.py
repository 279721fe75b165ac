"""End-to-end decode speed of `lwq generate` on a model of Mistral-7B's true shape, against the memory roofline.

Builds (once, kept in --work) a synthetic checkpoint with the first --layers blocks of Mistral-7B-v0.3's config
(scripts/make_synthetic_checkpoint.py; random weights, real shapes: hidden 4096, intermediate 14336, 32 heads, 8 kv
heads, vocabulary 32768), exports it (python -m lwq.export; the bf16 checkpoint is deleted after) and quantizes it
with RTN: int4 g128 (run exact by woq_linear, and with --compute int8 by woq_linear_a8) and int8 per channel. Every
linear is packed, the output head included (--no-default-exclude), so the per-token reads are the packed weights.
Then, in rounds, for each kernel level, thread count, format and build (interleaved, so a drift of the shared
machine's load touches every configuration alike):
`lwq generate --json` of --tokens tokens (greedy) after a prompt of --prompt-tokens tokens (BOS included). Each
round starts with the DRAM read bandwidth (lwq_bench_kernels --bandwidth: the median of 32 cold 64 MiB read passes
at each thread count; the roofline takes the better of the two). Prints per configuration the decode tokens/s
(median over rounds), the roofline (that bandwidth / the bytes read per token: packed weights of every linear + the
KV cache at the mean position), the share of it reached, and
the share of decode time spent outside the packed linear operators (1 - decode_linear_seconds / decode_seconds,
from the operators' own timer, torch_ops/op_stats.h).

    /usr/bin/python3 bench/bench_decode.py [--layers 8] [--work /work/bench/decode-e2e] [--builds build]
        [--threads 1,2] [--levels default,avx_vnni] [--formats int4_g128,int4_g128_a8,int8] [--rounds 3]
        [--json out.json] [--clean]

--builds takes several build directories (A,B) to compare builds run by run; DIR:SUFFIX makes that build run the
archives {format}SUFFIX.pt instead (e.g. ones exported before a change of the model definition); missing ones
are skipped. --clean deletes the work directory
at the end (for 8 blocks it holds 3.8 GB of exported bf16 weights and 5.5 GB of archives, whose fp32 embedding
is 0.5 GB each). Needs ../shared/data
(Mistral-7B-v0.3's config, index and tokenizer, and TinyStories text for the prompt).
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

SOURCE = pathlib.Path(__file__).resolve().parents[1]
DATA = SOURCE.parent / "shared" / "data"
MISTRAL = DATA / "mistral-7b-v0.3"
TEXT = DATA / "tinystories_val.txt"
PYTHON = "/usr/bin/python3"

FORMATS = {
    # name: quantize options
    "int4_g128": ["--dtype", "int4", "--group-size", "128"],
    "int4_g128_a8": ["--dtype", "int4", "--group-size", "128", "--compute", "int8"],
    "int8": ["--dtype", "int8", "--group-size", "-1"],
}


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, text=True, capture_output=True, **kw)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def prepare_model(work, layers, lwq):
    exported = work / "lwq"
    if (exported / "model.pt").exists():
        return exported
    ckpt = work / "ckpt"
    shutil.rmtree(ckpt, ignore_errors=True)
    shutil.rmtree(exported, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    log(f"synthetic checkpoint: {layers} blocks of Mistral-7B-v0.3 -> {ckpt}")
    run([PYTHON, SOURCE / "scripts" / "make_synthetic_checkpoint.py", MISTRAL, "--layers", layers, "--out", ckpt])
    for f in MISTRAL.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith("_config.json"):
            shutil.copy(f, ckpt / f.name)
    log(f"export -> {exported}")
    run([PYTHON, "-m", "lwq.export", "--hf", ckpt, "--out", exported, "--max-seq-len", 4096],
        env={**os.environ, "PYTHONPATH": str(SOURCE / "python")})
    shutil.rmtree(ckpt)
    return exported


def quantize(work, exported, fmt, lwq):
    out = work / f"{fmt}.pt"
    if not out.exists():
        log(f"quantize {fmt} -> {out}")
        run([lwq, "quantize", "--model", exported / "model.pt", "--weights", exported, "--algo", "rtn",
             *FORMATS[fmt], "--no-default-exclude", "--threads", 2, "--out", out])
    return out


def bytes_per_token(lwq, archive, cfg, mean_pos):
    summary = json.loads(run([lwq, "inspect", archive, "--json"]).stdout)
    linear = sum(l["bytes"] for l in summary["linears"])
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    kv = cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * head_dim * 4 * mean_pos
    return linear, kv


def make_prompt(lwq, tokenizer, n_tokens):
    """TinyStories text whose encoding (BOS included) is as close to n_tokens as whole words allow, not above."""
    words = TEXT.read_text().split()[:4 * n_tokens]

    def count(k):
        out = json.loads(run([lwq, "tokenize", "--tokenizer", tokenizer, "--text", " ".join(words[:k]),
                              "--json"]).stdout)
        return len(out["texts"][0]["ids"]) + (1 if out["add_bos"] else 0)

    lo, hi = 1, len(words)  # largest k with count(k) <= n_tokens
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(mid) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def bandwidth(build, threads):
    """Median DRAM read bandwidth (bytes/s) at each thread count, one process."""
    out = run([build / "bin" / "lwq_bench_kernels", "--bandwidth", "--threads", ",".join(map(str, threads)),
               "--json"]).stdout
    return {int(t): v["median_gbs"] * 1e9 for t, v in json.loads(out)["dram_read_bandwidth"].items()}


def generate(build, archive, tokenizer, prompt, tokens, threads, level):
    env = dict(os.environ)
    env.pop("LWQ_CPU", None)
    if level != "default":
        env["LWQ_CPU"] = level
    cmd = [build / "bin" / "lwq", "generate", "--model", archive, "--tokenizer", tokenizer, "--prompt", prompt,
           "--max-tokens", tokens, "--steps", 0, "--temperature", 0, "--no-stop-at-eos", "--threads", threads,
           "--json"]
    return json.loads(run(cmd, env=env).stdout)


def loadavg():
    return os.getloadavg()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/work/bench/decode-e2e"))
    ap.add_argument("--builds", default="build", help="build directories, comma-separated (relative: to the source)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--levels", default="default,avx_vnni", help="LWQ_CPU caps; default: the CPU's own level")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=pathlib.Path)
    ap.add_argument("--clean", action="store_true", help="delete --work at the end")
    a = ap.parse_args()

    builds, suffix = [], {}
    for spec in a.builds.split(","):
        d, _, sfx = spec.partition(":")
        b = (SOURCE / d).resolve() if not pathlib.Path(d).is_absolute() else pathlib.Path(d)
        builds.append(b)
        suffix[b.name] = sfx
    lwq = builds[-1] / "bin" / "lwq"
    threads = [int(t) for t in a.threads.split(",")]
    levels = a.levels.split(",")
    formats = a.formats.split(",")
    exported = prepare_model(a.work, a.layers, lwq)
    cfg = json.loads((MISTRAL / "config.json").read_text())
    cfg["num_hidden_layers"] = a.layers
    archives = {f: quantize(a.work, exported, f, lwq) for f in formats}
    prompt = make_prompt(lwq, exported, a.prompt_tokens)
    mean_pos = a.prompt_tokens + a.tokens / 2
    per_token = {f: bytes_per_token(lwq, archives[f], cfg, mean_pos) for f in formats}

    results = {}  # (build, fmt, level, threads) -> list of runs
    loads = [loadavg()]
    t_start = time.time()
    for r in range(a.rounds):
        # The roofline's bandwidth: the better of the thread counts' medians, measured once a round (on a shared
        # machine a statically split 2-thread read can fall far below the 1-thread one).
        bws = bandwidth(builds[-1], threads)
        bw = max(bws.values())
        loads.append(loadavg())
        log(f"round {r + 1}: DRAM read " + ", ".join(f"{v / 1e9:.1f} GB/s at {t}t" for t, v in bws.items()))
        # Builds and thread counts innermost: the pairs compared sit next to each other in time.
        for level in levels:
            for f in formats:
                for t in threads:
                    for b in builds:
                        archive = archives[f].with_name(f"{f}{suffix[b.name]}.pt")
                        if not archive.exists():
                            continue
                        g = generate(b, archive, exported, prompt, a.tokens, t, level)
                        loads.append(loadavg())
                        results.setdefault((b.name, f, level, t), []).append(
                            {"bandwidth": bw, "tok_s": g["decode_tokens_per_s"], "prompt_tokens": g["prompt_tokens"],
                             "decode_seconds": g["decode_seconds"], "linear_seconds": g["decode_linear_seconds"],
                             "forwards": g["decode_forwards"], "load": loads[-1],
                             "bandwidth_by_threads": {str(k): v for k, v in bws.items()}})
                        log(f"round {r + 1} {b.name} {f} {level} {t}t: {g['decode_tokens_per_s']:.2f} tok/s, "
                            f"outside {1 - g['decode_linear_seconds'] / g['decode_seconds']:.1%}, "
                            f"load {loads[-1]:.2f}")

    rows = []
    header = (f"{'build':<12} {'format':<13} {'level':<9} {'thr':>3} {'tok/s':>7} {'best':>7} {'BW GB/s':>8} "
              f"{'roofline':>8} {'%roof':>6} {'outside':>7}")
    print(f"{a.layers} blocks of Mistral-7B-v0.3 (+ packed head), prompt {results[next(iter(results))][0]['prompt_tokens']}"
          f" tokens, {a.tokens} generated; {a.rounds} rounds; load average {min(loads):.2f}-{max(loads):.2f}; "
          f"{(time.time() - t_start) / 60:.1f} min")
    for f in formats:
        lin, kv = per_token[f]
        print(f"  {f}: {lin / 1e6:.1f} MB of linear weights + {kv / 1e6:.1f} MB of KV cache read per token")
    print(header)
    for (b, f, level, t), runs in results.items():
        tok = statistics.median(x["tok_s"] for x in runs)
        best = max(x["tok_s"] for x in runs)
        bw = statistics.median(x["bandwidth"] for x in runs)
        roof = bw / sum(per_token[f])
        outside = statistics.median(1 - x["linear_seconds"] / x["decode_seconds"] for x in runs)
        rows.append({"build": b, "format": f, "level": level, "threads": t, "tok_s": tok, "best_tok_s": best,
                     "bandwidth_gbs": bw / 1e9, "roofline_tok_s": roof, "roofline_pct": 100 * tok / roof,
                     "outside_linear_pct": 100 * outside, "runs": runs})
        print(f"{b:<12} {f:<13} {level:<9} {t:>3} {tok:>7.2f} {best:>7.2f} {bw / 1e9:>8.1f} {roof:>8.2f} "
              f"{100 * tok / roof:>5.0f}% {100 * outside:>6.1f}%")
    if a.json:
        a.json.write_text(json.dumps({"layers": a.layers, "tokens": a.tokens, "rows": rows,
                                      "load": [min(loads), max(loads)]}, indent=1))
    if a.clean:
        shutil.rmtree(a.work)


if __name__ == "__main__":
    main()
