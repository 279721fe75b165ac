"""The demo's fallback model (scripts/train_tiny_llama.py), trained for a few steps: its tokenizer loads in the C++
tool and encodes as the Python reference does (lwq eval on the exported model gives the NLL the trainer computed in
Python), the loss goes down, the held-out text is disjoint from the training text, and --reuse skips a finished run.
The full demo (scripts/demo.sh) takes minutes and is not run here."""
import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import pytest

from conftest import LWQ, SOURCE_DIR, lwq, ok
from lwq import export as exporter
from lwq import llama2c

TRAIN = SOURCE_DIR / "scripts" / "train_tiny_llama.py"
LICENSES = pathlib.Path("/usr/share/common-licenses")
ARGS = ["--steps", "40", "--batch", "8", "--seq-len", "64", "--seed", "3", "--threads", "1", "--quiet"]

_spec = importlib.util.spec_from_file_location("train_tiny_llama", TRAIN)  # a script, not on the module path
train_tiny_llama = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_tiny_llama)


def train(out, *extra):
    return subprocess.run([sys.executable, str(TRAIN), "--out", str(out), *ARGS, *extra], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not (LICENSES / "Apache-2.0").exists():
        pytest.skip(f"{LICENSES} (Debian's base-files) is missing")
    out = tmp_path_factory.mktemp("tiny")
    result = train(out)
    assert result.returncode == 0, result.stderr
    return out


def test_loss_decreases(trained):
    info = json.loads((trained / "train.json").read_text())
    assert info["first_loss"] > info["final_loss"] + 0.5, info
    assert info["heldout_nll"] < info["heldout_nll_initial"] - 0.5, info
    assert info["heldout_nll"] < info["uniform_nll"], info
    assert info["config"]["vocab_size"] == 512 and info["config"]["max_seq_len"] == 64


def test_heldout_text_is_not_training_text(trained):
    train_text = set(llama2c.read_segments(str(trained / "train.txt")))
    heldout = llama2c.read_segments(str(trained / "heldout.txt"))
    calib = llama2c.read_segments(str(trained / "calib.txt"))
    assert len(heldout) > 50 and len(train_text) > 1000
    assert not train_text.intersection(heldout)
    assert set(calib) <= train_text


def test_tokenizer_round_trips_and_compresses(trained):
    tok = llama2c.Tokenizer(str(trained / "tokenizer.bin"))
    assert tok.vocab_size == 512
    text = " ".join(llama2c.read_segments(str(trained / "heldout.txt")))
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(text.encode()) / len(ids) > 1.5  # the merges are used, not just characters


def test_lwq_eval_matches_the_trainers_python_nll(trained, tmp_path):
    assert LWQ.exists(), f"{LWQ} is missing: build first"
    assert exporter.main(["--llama2c", str(trained / "model.bin"), "--out", str(tmp_path / "fp32"), "--quiet"]) == 0
    result = ok(lwq("eval", "--model", tmp_path / "fp32" / "model.pt", "--weights", tmp_path / "fp32", "--tokenizer",
                    trained / "tokenizer.bin", "--text", trained / "heldout.txt", "--json"))
    got = json.loads(result.stdout)
    info = json.loads((trained / "train.json").read_text())
    # Same ids (C++ tokenizer = Python reference), same weights (the .bin layout), same protocol.
    assert got["tokens"] == info["corpus"]["heldout_tokens"]
    assert math.isclose(got["nll"], info["heldout_nll"], rel_tol=1e-5), (got, info["heldout_nll"])


def test_reuse_skips_a_finished_run_and_not_a_different_one(trained):
    model = trained / "model.bin"
    before = model.stat().st_mtime_ns
    result = train(trained, "--reuse")
    assert result.returncode == 0, result.stderr
    assert model.stat().st_mtime_ns == before

    info = json.loads((trained / "train.json").read_text())
    key = (info["settings"], info["corpus"]["sha256"], info["script_sha256"])
    assert train_tiny_llama.previous_run_matches(str(trained), *key)
    assert not train_tiny_llama.previous_run_matches(str(trained), dict(key[0], seed=4), *key[1:])
    assert not train_tiny_llama.previous_run_matches(str(trained), key[0], "0" * 64, key[2])
