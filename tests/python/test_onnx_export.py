"""lwq models out (docs/onnx.md): the real stories260K exported to ONNX + external data and run in ONNX Runtime,
float and quantized, against lwq's own logits; the formats ONNX Runtime cannot run refused up front; outputs that
never overwrite an input and never exist half-written. Skipped without onnx/onnxruntime or ../shared/data."""
import json
import os

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="onnx is not installed (tests/requirements.txt installs it into .venv)")
ort = pytest.importorskip("onnxruntime",
                          reason="onnxruntime is not installed (tests/requirements.txt installs it into .venv)")

from conftest import STORIES, TOKENIZER, needs_stories  # noqa: E402
from lwq import export as model_export  # noqa: E402
from lwq.llama import LlamaConfig, build_model  # noqa: E402
from lwq.onnx import export as onnx_export  # noqa: E402
from lwq.safetensors import load_into_module  # noqa: E402

pytestmark = needs_stories
ort.set_default_logger_severity(3)


def ort_logits(path, ids: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input_ids": ids.numpy()})[0]


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref|."""
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    """The exported model directory of the real stories260K."""
    out = tmp_path_factory.mktemp("onnx") / "s260"
    assert model_export.main(["--llama2c", str(STORIES), "--tokenizer", str(TOKENIZER), "--out", str(out),
                              "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def tokens():
    """Two sequences of 48 tokens (batch and sequence dimensions both dynamic in the graph)."""
    return torch.randint(3, 512, (2, 48), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def float_logits(stories, tokens):
    model = build_model(LlamaConfig.from_json(json.loads((stories / "config.json").read_text())), device="meta")
    load_into_module(model, str(stories))
    with torch.no_grad():
        return model.eval()(tokens).numpy()


def test_float_model_runs_in_onnx_runtime_as_lwq(stories, tokens, float_logits, tmp_path):
    out = tmp_path / "float.onnx"
    assert onnx_export.main(["--float", str(stories), str(out)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["float.onnx", "float.onnx.data"]
    onnx.checker.check_model(str(out))
    graph = onnx.load(str(out), load_external_data=False).graph
    locations = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"float.onnx.data"}  # one file, relative to the model
    assert "embed_tokens.weight" in {t.name for t in graph.initializer}
    assert rel_error(ort_logits(out, tokens), float_logits) <= 1e-4
    # Batch and sequence are dynamic: one token of one sequence gives that position's logits.
    assert rel_error(ort_logits(out, tokens[1:, :1]), float_logits[1:, :1]) <= 1e-4
