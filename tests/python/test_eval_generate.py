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

from conftest import GREEDY, LWQ, STORIES, TEXT, TOKENIZER, fails, lwq, ok
from lwq import export as exporter

TINY = pathlib.Path(__file__).resolve().parent / "fixtures" / "tiny_llama.py"

# Mean NLL of the fp32 stories260K on the first 600 paragraphs (lwq.llama2c's protocol: 1.42203).
FP32_NLL_600 = 1.422


def eval_json(*args):
    result = ok(lwq("eval", *args, "--json"))
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # exactly one JSON object, nothing else on stdout
    out = json.loads(lines[0])
    assert list(out) == ["nll", "ppl", "tokens", "segments"]
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


def test_archive_with_a_record_cut_short_is_refused_not_a_crash(tiny, tmp_path):
    """Each tensor record of a quantized archive emptied in turn (found by mutation: SIGSEGV in eval): the run
    fails with a message naming the file and the tensor, or, for a record the model never reads, succeeds."""
    q = tmp_path / "q4.pt"
    ok(lwq("quantize", "--model", tiny / "model.pt", "--weights", tiny / "model.safetensors", "--algo", "rtn",
           "--dtype", "int4", "--group-size", 32, "--out", q, "--quiet"))
    source = zipfile.ZipFile(q)
    records = [n for n in source.namelist() if "/data/" in n]
    damaged = tmp_path / "damaged.pt"
    refused = set()
    for victim in records:
        with zipfile.ZipFile(damaged, "w", zipfile.ZIP_STORED) as out:
            for name in source.namelist():
                out.writestr(zipfile.ZipInfo(name), b"" if name == victim else source.read(name))
        result = lwq("eval", "--model", damaged, "--tokenizer", tiny / "tokenizer.bin", "--text", tiny / "text.txt")
        assert result.returncode in (0, 1), (victim, result.returncode, result.stderr[-300:])
        if result.returncode == 1:
            assert str(damaged) in result.stderr and "needs" in result.stderr, (victim, result.stderr)
            refused.add("PackedWeight state" if "PackedWeight state" in result.stderr else "damaged")
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
