"""Encoding speed of lwq's tokenizer.json BPE against the `tokenizers` library, one thread each, same run.

Encodes all of tinystories_val.txt (as one text, and paragraph by paragraph) with the Mistral-7B-v0.3 tokenizer.json
and with byte-level BPE tokenizers trained here (GPT-2 style; Llama-3 style with a Split pattern and NFC). lwq's time
is the encoding time `lwq tokenize --json` reports (encode_seconds: the tokenizer already loaded, a cold word cache);
the reference's is `Tokenizer.encode` on a freshly loaded tokenizer (cold cache too), RAYON_NUM_THREADS=1. Best of
--repeat runs each. Prints the times and lwq / tokenizers.

    LWQ_BUILD_DIR=build .venv/bin/python bench/bench_tokenizers.py [--repeat 3]
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SOURCE = pathlib.Path(__file__).resolve().parents[1]
BUILD = pathlib.Path(os.environ.get("LWQ_BUILD_DIR", SOURCE / "build"))
DATA = SOURCE.parent / "shared" / "data"
sys.path.insert(0, str(SOURCE / "tests" / "python"))
sys.path.insert(0, str(SOURCE / "python"))

import tokenizers  # noqa: E402
from lwq import llama2c  # noqa: E402


def lwq_seconds(tok, path, null, repeat):
    best = float("inf")
    for _ in range(repeat):
        args = [str(BUILD / "bin" / "lwq"), "tokenize", "--tokenizer", str(tok), "--file", str(path), "--json"]
        out = subprocess.run(args + (["--null"] if null else []), check=True, capture_output=True).stdout
        best = min(best, json.loads(out)["encode_seconds"])
    return best


def hf_seconds(tok, texts, repeat):
    best = float("inf")
    for _ in range(repeat):
        t = tokenizers.Tokenizer.from_file(str(tok))
        t.encode_special_tokens = True
        start = time.perf_counter()
        for s in texts:
            t.encode(s, add_special_tokens=False)
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    text_path = DATA / "tinystories_val.txt"
    whole = text_path.read_text(encoding="utf-8")
    paragraphs = llama2c.read_segments(str(text_path))
    from test_tokenizers import train  # the same trained tokenizers as the tests
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        (d / "para.txt").write_bytes(b"\0".join(p.encode() for p in paragraphs))
        toks = {"mistral-7b-v0.3 tokenizer.json": DATA / "mistral-7b-v0.3" / "tokenizer.json"}
        for style in ("gpt2", "llama3"):
            toks[f"byte-level BPE ({style}, trained)"] = train(d / f"{style}.json", paragraphs, style)
        print(f"tokenizers {tokenizers.__version__}, one thread, best of {args.repeat}; {len(whole)} bytes, "
              f"{len(paragraphs)} paragraphs")
        print(f"{'tokenizer':36} {'input':11} {'tokenizers s':>12} {'lwq s':>8} {'lwq/tokenizers':>15}")
        for name, tok in toks.items():
            for mode, texts, path, null in (("whole file", [whole], text_path, False),
                                            ("paragraphs", paragraphs, d / "para.txt", True)):
                hf = hf_seconds(tok, texts, args.repeat)
                ours = lwq_seconds(tok, path, null, args.repeat)
                print(f"{name:36} {mode:11} {hf:12.4f} {ours:8.4f} {ours / hf:15.2f}")


if __name__ == "__main__":
    main()
