"""The accuracy targets of docs/accuracy.md that hold on the real stories260K, measured here with the lwq tool end
to end (export, `lwq quantize`, `lwq eval` on the first 600 TinyStories paragraphs, as scripts/accuracy.py does):
RTN int8 per channel within 0.002 nats of fp32, GPTQ int4 g32 at most 0.7x RTN int4 g32's increase, and W8A8 with
SmoothQuant within 0.02 nats. The missed targets (AWQ, TEQ) are explained in docs/accuracy.md, not tested.
Skipped when ../shared/data is absent."""
import json

import pytest

from conftest import SHARED_DATA, STORIES, TEXT, TOKENIZER, ok
from conftest import lwq as run_lwq
from lwq import export as exporter

SEGMENTS = 600      # the evaluation protocol of docs/evaluation.md; fewer would blur the 0.002 int8 budget
CALIB_LINES = 2000  # calibration: the last lines of the file, far from the first 600 paragraphs

pytestmark = pytest.mark.skipif(not (STORIES.exists() and TOKENIZER.exists() and TEXT.exists()),
                                reason=f"real model data not found in {SHARED_DATA} (stories260K.bin, tok512.bin, "
                                       "tinystories_val.txt)")


def lwq(*args):
    return ok(run_lwq(*args))


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    """The exported model directory and the calibration text, shared by every test of this file."""
    out = tmp_path_factory.mktemp("accuracy")
    assert exporter.main(["--llama2c", str(STORIES), "--out", str(out / "s260"), "--quiet"]) == 0
    lines = TEXT.read_text(encoding="utf-8").splitlines()
    (out / "calib.txt").write_text("\n".join(lines[-CALIB_LINES:]) + "\n", encoding="utf-8")
    return out


def nll(*model_args):
    result = lwq("eval", *model_args, "--tokenizer", TOKENIZER, "--text", TEXT, "--segments", SEGMENTS,
                 "--threads", 1, "--json")
    return json.loads(result.stdout)["nll"]


def quantized_nll(stories, name, *options, calibrated=False):
    out = stories / f"{name}.pt"
    calib = ["--calib", stories / "calib.txt", "--tokenizer", TOKENIZER] if calibrated else []
    lwq("quantize", "--model", stories / "s260" / "model.pt", "--weights", stories / "s260" / "model.safetensors",
        *options, *calib, "--out", out, "--threads", 1, "--quiet")
    return nll("--model", out)


@pytest.fixture(scope="module")
def fp32_nll(stories):
    return nll("--model", stories / "s260" / "model.pt", "--weights", stories / "s260" / "model.safetensors")


def test_rtn_int8_per_channel_within_0_002_of_fp32(stories, fp32_nll):
    for sign in ("--sym", "--asym"):
        q = quantized_nll(stories, f"int8{sign}", "--algo", "rtn", "--dtype", "int8", "--group-size", -1, sign)
        assert abs(q - fp32_nll) <= 0.002, (sign, q, fp32_nll)


def test_gptq_int4_g32_at_most_0_7_of_rtn(stories, fp32_nll):
    spec = ["--dtype", "int4", "--group-size", 32, "--asym"]
    rtn = quantized_nll(stories, "rtn4", "--algo", "rtn", *spec) - fp32_nll
    gptq = quantized_nll(stories, "gptq4", "--algo", "gptq", *spec, calibrated=True) - fp32_nll
    assert rtn > 0.05, rtn  # int4 g32 loses something measurable: the ratio below means something
    assert gptq <= 0.7 * rtn, (gptq, rtn, gptq / rtn)


def test_w8a8_smoothquant_within_0_02_of_fp32(stories, fp32_nll):
    q = quantized_nll(stories, "w8a8sq", "--algo", "w8a8", "--dtype", "int8", "--group-size", -1,
                      "--smoothquant", 0.5, calibrated=True)
    assert abs(q - fp32_nll) <= 0.02, (q, fp32_nll)
