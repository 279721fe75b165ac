"""`lwq eval` and `lwq generate` end to end (subprocess of the binary): on the tiny contract Llama of
fixtures/tiny_llama.py against its eager Python reference, and on the real stories260K exported by lwq.export
(skipped when ../shared/data is absent): greedy output equal to llama2.c's, NLL on 600 paragraphs, and int8 RTN close
to fp32."""
import json
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest
import torch

from conftest import GREEDY, LWQ, STORIES, TEXT, TOKENIZER, fails, lwq, ok
from lwq import export as exporter
from lwq import llama, llama2c
from lwq.safetensors import read_safetensors

TINY = pathlib.Path(__file__).resolve().parent / "fixtures" / "tiny_llama.py"

# Mean NLL of the fp32 stories260K on the first 600 paragraphs (lwq.llama2c's protocol: 1.42203).
FP32_NLL_600 = 1.422


PER_PARAGRAPH_KEYS = ["nll", "ppl", "tokens", "segments"]
CHUNKED_KEYS = PER_PARAGRAPH_KEYS + ["seq_len", "windows", "text_tokens", "tail_tokens"]


def eval_json(*args, keys=PER_PARAGRAPH_KEYS):
    result = ok(lwq("eval", *args, "--json"))
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # exactly one JSON object, nothing else on stdout
    out = json.loads(lines[0])
    assert list(out) == keys
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    assert LWQ.exists(), f"{LWQ} is missing: build first"
    out = tmp_path_factory.mktemp("tiny")
    subprocess.run([sys.executable, str(TINY), "--out", str(out), "--seed", "2"], check=True)
    return out


@pytest.fixture(scope="module")
def ref(tiny):
    """What the eager Python model gives (tiny_llama.py's reference.json)."""
    return json.loads((tiny / "reference.json").read_text())


def tiny_args(tiny, model="model.pt", weights=True):
    return ["--model", tiny / model, *(["--weights", tiny / "model.safetensors"] if weights else []),
            "--tokenizer", tiny / "tokenizer.bin"]


def test_eval_json_matches_the_python_reference(tiny, ref):
    for seq_len in (64, 8):
        got = eval_json(*tiny_args(tiny), "--text", tiny / "text.txt", "--seq-len", seq_len, "--threads", 1)
        want = ref[f"nll_seq_len_{seq_len}"]
        assert got["nll"] == pytest.approx(want, rel=1e-5)
        assert got["ppl"] == pytest.approx(2.718281828459045 ** got["nll"], rel=1e-9)
        assert got["tokens"] == ref[f"tokens_seq_len_{seq_len}"] and got["segments"] == 4
    # --segments takes the first N; one sequence per batch gives the same figure.
    two = eval_json(*tiny_args(tiny), "--text", tiny / "text.txt", "--segments", 2, "--batch-tokens", 1)
    assert two["segments"] == 2 and two["tokens"] < ref["tokens_seq_len_64"]
    text = lwq("eval", *tiny_args(tiny), "--text", tiny / "text.txt")
    assert ok(text).stdout.startswith("mean NLL ") and "4 paragraphs" in text.stdout


def test_generate_prints_what_run_c_prints(tiny, ref):
    g = ref["greedy"]
    result = ok(lwq("generate", *tiny_args(tiny), "--prompt", g["prompt"], "--steps", g["steps"],
                    "--temperature", 0, "--no-stop-at-eos"))
    assert result.stdout == g["printed"]
    assert re.search(r"prompt: \d+ tokens .* tokens/s", result.stderr), result.stderr


def test_generate_json_gives_the_facts_of_the_text(tiny, ref):
    g = ref["greedy"]
    args = [*tiny_args(tiny), "--prompt", g["prompt"], "--steps", g["steps"], "--temperature", 0, "--no-stop-at-eos"]
    text = ok(lwq("generate", *args))
    result = ok(lwq("generate", *args, "--json"))
    assert len(result.stdout.splitlines()) == 1 and result.stderr == ""
    got = json.loads(result.stdout)
    assert got["text"] + "\n" == text.stdout == g["printed"]
    assert f"generated {got['generated']} tokens, stopped at {got['stop']} after {got['positions']} positions" \
        in text.stderr
    assert got["prompt_tokens"] >= 1 and len(got["tokens"]) >= got["generated"] > 0 and "seed" not in got
    assert got["decode_tokens_per_s"] > 0 and got["decode_forwards"] > 0
    assert 0 <= got["decode_linear_seconds"] <= got["decode_seconds"]


def test_seq_len_has_one_spelling_and_the_old_alias(tiny):
    a = eval_json(*tiny_args(tiny), "--text", tiny / "text.txt", "--seq-len", 8)
    b = eval_json(*tiny_args(tiny), "--text", tiny / "text.txt", "--seqlen", 8)
    assert a == b


def test_sampled_generation_is_reproducible_with_a_seed(tiny):
    args = [*tiny_args(tiny), "--steps", 30, "--temperature", 0.8, "--top-p", 0.95]
    a = ok(lwq("generate", *args, "--seed", 11))
    b = ok(lwq("generate", *args, "--seed", 11))
    assert a.stdout == b.stdout and "seed 11" in a.stderr


def test_quantized_archive_evaluates_and_generates(tiny, tmp_path):
    q = tmp_path / "q8.pt"
    ok(lwq("quantize", "--model", tiny / "model.pt", "--weights", tiny / "model.safetensors", "--algo", "rtn",
           "--dtype", "int8", "--group-size", -1, "--out", q, "--quiet"))
    fp32 = eval_json(*tiny_args(tiny), "--text", tiny / "text.txt")
    int8 = eval_json("--model", q, "--tokenizer", tiny / "tokenizer.bin", "--text", tiny / "text.txt")
    assert int8["tokens"] == fp32["tokens"]
    assert int8["nll"] != fp32["nll"], "a quantized model cannot be exact: is it still float?"
    assert abs(int8["nll"] - fp32["nll"]) < 0.01 * fp32["nll"]
    out = ok(lwq("generate", "--model", q, "--tokenizer", tiny / "tokenizer.bin", "--steps", 20))
    assert out.stdout.endswith("\n")


@pytest.mark.parametrize("keep", ["nothing", "half", "all but one byte"])
def test_archive_with_a_record_cut_short_is_refused_not_a_crash(tiny, tmp_path, keep):
    """Each tensor record of a quantized archive cut short in turn, in a zip that is otherwise consistent (emptied:
    found by mutation, SIGSEGV in eval; cut to fewer bytes: LibTorch gives the storage its declared size over the
    shorter memory, a read past the allocation): the run fails with a message naming the file and the tensor, or, for
    a record the model never reads, succeeds."""
    q = tmp_path / "q4.pt"
    ok(lwq("quantize", "--model", tiny / "model.pt", "--weights", tiny / "model.safetensors", "--algo", "rtn",
           "--dtype", "int4", "--group-size", 32, "--out", q, "--quiet"))
    source = zipfile.ZipFile(q)
    records = [n for n in source.namelist() if "/data/" in n and len(source.read(n)) > 1]
    cut = {"nothing": lambda b: b"", "half": lambda b: b[:len(b) // 2], "all but one byte": lambda b: b[:-1]}[keep]
    damaged = tmp_path / "damaged.pt"
    refused = set()
    for victim in records:
        with zipfile.ZipFile(damaged, "w", zipfile.ZIP_STORED) as out:
            for name in source.namelist():
                out.writestr(zipfile.ZipInfo(name), cut(source.read(name)) if name == victim else source.read(name))
        result = lwq("eval", "--model", damaged, "--tokenizer", tiny / "tokenizer.bin", "--text", tiny / "text.txt")
        assert result.returncode in (0, 1), (victim, result.returncode, result.stderr[-300:])
        if result.returncode == 1:
            assert str(damaged) in result.stderr and "needs" in result.stderr, (victim, result.stderr)
            refused.add("PackedWeight state" if "PackedWeight state" in result.stderr else "damaged")
        else:
            assert keep == "nothing", (victim, "a record cut short was not noticed")  # only empty unused records
    assert refused == {"PackedWeight state", "damaged"}  # packed codes and float tensors both caught


def test_usage_and_input_errors(tiny, tmp_path):
    for command in ("eval", "generate"):
        result = lwq(command, "--help")
        assert result.returncode == 0 and f"usage: lwq {command}" in result.stdout
    result = lwq("eval", "--model", tiny / "model.pt", "--text", tiny / "text.txt")
    assert result.returncode == 1 and "--tokenizer is required" in result.stderr
    result = lwq("generate", *tiny_args(tiny), "--temperature", -1)
    assert result.returncode == 1 and "--temperature must be >= 0" in result.stderr
    result = lwq("generate", *tiny_args(tiny), "--steps", 3, "--seed", 5)
    assert result.returncode == 0 and "--seed applies to sampling" in result.stderr
    result = lwq("eval", *tiny_args(tiny, weights=False), "--text", tiny / "text.txt")
    assert result.returncode == 1 and "embed_tokens.weight" in result.stderr and "--weights" in result.stderr
    bad = tmp_path / "bad.bin"
    bad.write_bytes((tiny / "tokenizer.bin").read_bytes()[:-3])
    result = lwq("generate", "--model", tiny / "model.pt", "--weights", tiny / "model.safetensors",
                 "--tokenizer", bad)
    assert result.returncode == 1 and str(bad) in result.stderr and "truncated" in result.stderr
    assert result.stdout == ""
    # Longer than the model's positions: a message, not a TorchScript traceback.
    max_len = json.loads((tiny / "config.json").read_text())["max_seq_len"]
    fails(lwq("eval", *tiny_args(tiny), "--text", tiny / "text.txt", "--seq-len", max_len + 1),
          f"--seq-len {max_len + 1} is longer than the model", f"({max_len} positions)")
    eval_json(*tiny_args(tiny), "--text", tiny / "text.txt", "--seq-len", max_len)


def test_top_k_one_is_greedy_and_max_tokens_counts_after_the_prompt(tiny, ref):
    g = ref["greedy"]
    args = [*tiny_args(tiny), "--prompt", g["prompt"], "--no-stop-at-eos", "--json"]
    greedy = json.loads(ok(lwq("generate", *args, "--steps", g["steps"], "--temperature", 0)).stdout)
    top1 = json.loads(ok(lwq("generate", *args, "--steps", g["steps"], "--temperature", 1.5, "--top-k", 1,
                             "--seed", 3)).stdout)
    assert top1["tokens"] == greedy["tokens"] == g["tokens"]
    # Sampling with a seed repeats itself with top-k as without.
    sampled = [*args, "--steps", 30, "--temperature", 1.0, "--top-k", 5, "--top-p", 0.9, "--seed", 7]
    a, b = (json.loads(ok(lwq("generate", *sampled)).stdout) for _ in range(2))
    assert a["tokens"] == b["tokens"] and a["text"] == b["text"]
    # --max-tokens alone runs up to the model's positions; with --steps the first limit ends generation.
    five = json.loads(ok(lwq("generate", *args, "--temperature", 0, "--max-tokens", 5)).stdout)
    assert five["generated"] == 5 and five["stop"] == "max_tokens"
    assert five["tokens"] == g["tokens"][:five["prompt_tokens"] - 1 + 5]
    many = json.loads(ok(lwq("generate", *args, "--temperature", 0, "--max-tokens", 1000)).stdout)
    assert many["stop"] == "steps" and many["positions"] == 64  # the model's maximum, not the default 256 steps
    both = json.loads(ok(lwq("generate", *args, "--temperature", 0, "--max-tokens", 50, "--steps", 10)).stdout)
    assert both["stop"] == "steps" and both["positions"] == 10
    result = lwq("generate", *tiny_args(tiny), "--steps", 3, "--top-k", 4)
    assert result.returncode == 0 and "--top-k applies to sampling" in result.stderr


def test_a_prompt_longer_than_the_positions_is_refused_not_cut(tiny):
    prompt = "the cat sat on the mat and the dog ran in"
    n = len(llama2c.Tokenizer(str(tiny / "tokenizer.bin")).encode(prompt, bos=True))
    fails(lwq("generate", *tiny_args(tiny), "--prompt", prompt, "--steps", 4),
          f"the prompt is {n} tokens long (BOS included), more than --steps 4 positions")
    fails(lwq("generate", *tiny_args(tiny), "--prompt", prompt * 8),
          "tokens long (BOS included), more than the model's maximum of 64 positions")


def chunked_reference(model, tok, segments, seq_len):
    """llama-perplexity's windows, computed here directly: BOS + seq_len - 1 tokens of the concatenated paragraphs
    per window, the tokens from index seq_len // 2 on scored."""
    stream = [t for s in segments for t in tok.encode(s)]
    per = seq_len - 1
    windows = [[llama2c.BOS] + stream[i:i + per] for i in range(0, len(stream) - per + 1, per)]
    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            logits = model(torch.tensor([w]))[0].double()
            lp = torch.log_softmax(logits[:-1], -1)
            first = seq_len // 2
            targets = torch.tensor(w[first:])
            total -= float(lp[first - 1:].gather(1, targets[:, None]).sum())
            count += len(targets)
    return total / count, count, len(windows), len(stream) - len(windows) * per


def eager_tiny(tiny):
    cfg = llama.LlamaConfig.from_json(json.loads((tiny / "config.json").read_text()))
    model = llama.LlamaModel(cfg).eval()
    model.load_state_dict(read_safetensors(tiny / "model.safetensors")[0], strict=False)
    return model


def test_chunked_perplexity_matches_a_direct_computation(tiny):
    model = eager_tiny(tiny)
    tok = llama2c.Tokenizer(str(tiny / "tokenizer.bin"))
    segments = llama2c.read_segments(str(tiny / "text.txt"))
    for seq_len in (16, 9):
        got = eval_json(*tiny_args(tiny), "--text", tiny / "text.txt", "--chunked", "--seq-len", seq_len,
                        keys=CHUNKED_KEYS)
        nll, count, windows, tail = chunked_reference(model, tok, segments, seq_len)
        assert got["nll"] == pytest.approx(nll, rel=1e-5)
        assert (got["tokens"], got["windows"], got["tail_tokens"]) == (count, windows, tail)
        assert got["text_tokens"] == sum(len(tok.encode(s)) for s in segments) and got["seq_len"] == seq_len
        assert tail > 0  # the last partial window is left out, and said
    text = ok(lwq("eval", *tiny_args(tiny), "--text", tiny / "text.txt", "--chunked", "--seq-len", 16)).stdout
    assert "scored tokens of 7 windows of 16 tokens" in text and "not scored" in text
    # Shorter than one window (the model's 64 positions by default): refused, naming both lengths.
    fails(lwq("eval", *tiny_args(tiny), "--text", tiny / "text.txt", "--chunked", "--segments", 1),
          "fewer than one window of 63 text tokens (--seq-len 64, BOS included)")


def test_eval_shows_progress_on_a_terminal_only(tiny):
    import os
    import pty
    main, sub = pty.openpty()
    try:
        result = subprocess.run([str(LWQ), "eval", *map(str, tiny_args(tiny)), "--text", str(tiny / "text.txt"),
                                 "--batch-tokens", "1"], stdout=subprocess.PIPE, stderr=sub, timeout=120)
        os.close(sub)
        sub = -1
        seen = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if sub >= 0:
            os.close(sub)
        os.close(main)
    assert result.returncode == 0 and b"eval: batch 3/4" in seen
    assert "eval: batch" not in ok(lwq("eval", *tiny_args(tiny), "--text", tiny / "text.txt")).stderr


def test_inspect_shows_the_family_and_the_tokenizer(tiny, tmp_path):
    out = ok(lwq("inspect", tiny / "model.pt")).stdout
    assert f"family: llama ({tiny / 'config.json'})" in out
    assert "tokenizer: llama2.c tokenizer.bin (" in out and "BOS 1, EOS 2" in out
    got = json.loads(ok(lwq("inspect", tiny / "model.pt", "--json")).stdout)
    assert got["family"] == "llama" and got["tokenizer"]["bos"] == 1 and got["tokenizer"]["eos"] == [2]
    # Alone in a directory: said plainly. The weights' directory is searched too; --tokenizer names one.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.pt").write_bytes((tiny / "model.pt").read_bytes())
    out = ok(lwq("inspect", alone / "model.pt")).stdout
    assert f"family: not found (no config.json in {alone})" in out
    assert "tokenizer: none found (no tokenizer.json, tokenizer.model or tokenizer.bin in" in out
    got = json.loads(ok(lwq("inspect", alone / "model.pt", "--json")).stdout)
    assert got["family"] is None and got["tokenizer"] is None
    out = ok(lwq("inspect", alone / "model.pt", "--weights", tiny / "model.safetensors")).stdout
    assert "family: llama" in out and "BOS 1, EOS 2" in out
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "qwen2", "architecture": "ignored"}))
    (hf / "tokenizer.bin").write_bytes(b"\0\0")
    out = ok(lwq("inspect", alone / "model.pt", "--weights", hf)).stdout
    assert "family: qwen2" in out and f"tokenizer: found in {hf} but not read" in out
    fails(lwq("inspect", alone / "model.pt", "--tokenizer", hf / "tokenizer.bin"), str(hf / "tokenizer.bin"))
    out = ok(lwq("inspect", alone / "model.pt", "--tokenizer", tiny / "tokenizer.bin")).stdout
    assert "BOS 1, EOS 2" in out


def test_calibration_text_errors_name_the_file(tiny, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n \n")
    base = ["quantize", "--model", tiny / "model.pt", "--weights", tiny / "model.safetensors", "--algo", "gptq",
            "--tokenizer", tiny / "tokenizer.bin", "--out", tmp_path / "q.pt"]
    fails(lwq(*base, "--calib", empty), f"the calibration text {empty} has no paragraphs")
    fails(lwq(*base, "--calib", tiny / "text.txt", "--nsamples", 100, "--seq-len", 16),
          f"the calibration text {tiny / 'text.txt'} gives", "fewer than --nsamples 100 x --seq-len 16")
    ok(lwq(*base, "--calib", tiny / "text.txt", "--nsamples", 2, "--seq-len", 16, "--quiet"))


# ----------------------------------------------------------------------------------------------------------------
# The real model

@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    if not STORIES.exists():
        pytest.skip(f"real test material absent: {STORIES} not found (see ../shared/data)")
    assert LWQ.exists(), f"{LWQ} is missing: build first"
    out = tmp_path_factory.mktemp("stories") / "export"
    assert exporter.main(["--llama2c", str(STORIES), "--out", str(out), "--quiet"]) == 0
    return out


def test_real_greedy_generation_reproduces_llama2c(stories):
    result = ok(lwq("generate", "--model", stories / "model.pt", "--weights", stories / "model.safetensors",
                    "--tokenizer", TOKENIZER, "--steps", 256, "--temperature", 0, "--threads", 1))
    # run.c prints the pieces and a newline; the reference file has one more newline ending the file.
    assert result.stdout + "\n" == GREEDY.read_text(encoding="utf-8")
    assert "generated 256 tokens" in result.stderr


def test_real_nll_and_int8_rtn(stories, tmp_path):
    common = ["--tokenizer", TOKENIZER, "--text", TEXT, "--segments", 600, "--threads", 1]
    fp32 = eval_json("--model", stories / "model.pt", "--weights", stories / "model.safetensors", *common)
    assert fp32["segments"] == 600 and fp32["tokens"] == 58918
    assert abs(fp32["nll"] - FP32_NLL_600) < 0.005, fp32
    q = tmp_path / "q8.pt"
    ok(lwq("quantize", "--model", stories / "model.pt", "--weights", stories / "model.safetensors", "--algo", "rtn",
           "--dtype", "int8", "--group-size", -1, "--out", q, "--quiet"))
    int8 = eval_json("--model", q, *common)
    assert int8["tokens"] == fp32["tokens"]
    assert 0 < abs(int8["nll"] - fp32["nll"]) < 0.002, (fp32, int8)


def test_real_chunked_perplexity_matches_a_direct_computation(stories):
    segments = llama2c.read_segments(str(TEXT), 100)
    got = eval_json("--model", stories / "model.pt", "--weights", stories / "model.safetensors", "--tokenizer",
                    TOKENIZER, "--text", TEXT, "--segments", 100, "--chunked", "--seq-len", 256, "--threads", 1,
                    keys=CHUNKED_KEYS)
    model = llama2c.load_model(str(STORIES)).eval()
    nll, count, windows, tail = chunked_reference(model, llama2c.Tokenizer(str(TOKENIZER)), segments, 256)
    assert (got["tokens"], got["windows"], got["tail_tokens"]) == (count, windows, tail) and windows > 10
    assert got["nll"] == pytest.approx(nll, rel=1e-5)


def test_calibration_token_ids_outside_the_vocabulary_are_named(tiny, tmp_path):
    """Token ids the model's embedding cannot look up (negative, or past its rows) are refused before any work,
    naming the file, the sample and the position; in range they calibrate."""
    from lwq.safetensors import write_safetensors
    vocab = json.loads((tiny / "config.json").read_text())["vocab_size"]
    base = ["quantize", "--model", tiny / "model.pt", "--weights", tiny / "model.safetensors", "--algo", "gptq",
            "--out", tmp_path / "q.pt", "--quiet", "--calib-tensors"]
    ids = torch.randint(0, vocab, (4, 16), generator=torch.Generator().manual_seed(0))
    for value, row, col in ((vocab, 2, 5), (-3, 1, 0)):
        bad = ids.clone()
        bad[row, col] = value
        write_safetensors(tmp_path / "calib.safetensors", {"input_ids": bad})
        fails(lwq(*base, tmp_path / "calib.safetensors"), "calib.safetensors",
              f"sample {row}, position {col}: id {value}", f"[0, {vocab})")
        assert not (tmp_path / "q.pt").exists()
    write_safetensors(tmp_path / "calib.safetensors", {"input_ids": ids})
    assert lwq(*base, tmp_path / "calib.safetensors").returncode == 0
