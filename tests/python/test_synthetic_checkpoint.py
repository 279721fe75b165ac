"""scripts/make_synthetic_checkpoint.py: a checkpoint with a real model's exact layout (names, shapes, shards)."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import SHARED_DATA, SOURCE_DIR
from lwq.safetensors import WeightStore

SCRIPT = SOURCE_DIR / "scripts" / "make_synthetic_checkpoint.py"
MISTRAL = SHARED_DATA / "mistral-7b-v0.3"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not MISTRAL.exists(), reason=f"real test material absent: {MISTRAL} not found (../shared/data)")
def test_mistral_7b_layout_matches_its_index_to_the_byte():
    r = run(MISTRAL, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "291 tensors, 14.50 GB of BF16 in 3 shards" in r.stdout


def small_source(tmp_path, layers=2):
    src = tmp_path / "src"
    src.mkdir()
    config = {"model_type": "mistral", "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": layers, "vocab_size": 100, "torch_dtype": "bfloat16",
              "tie_word_embeddings": False}
    (src / "config.json").write_text(json.dumps(config))
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for i in range(layers):
        names += [f"model.layers.{i}.{n}" for n in (
            "input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
            "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight", "mlp.gate_proj.weight",
            "mlp.up_proj.weight", "mlp.down_proj.weight")]
    weight_map = {n: ("model-00001-of-00002.safetensors" if "layers.1." not in n else
                      "model-00002-of-00002.safetensors") for n in names}
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return src, weight_map


def test_writes_every_tensor_in_its_shard_with_the_implied_shape(tmp_path):
    src, weight_map = small_source(tmp_path)
    out = tmp_path / "ckpt"
    r = run(src, "--out", out)
    assert r.returncode == 0, r.stderr
    store = WeightStore(str(out))
    assert sorted(store.names()) == sorted(weight_map)
    for name, shard in weight_map.items():
        assert store.file_of(name).path.endswith(shard), name
        assert store.dtype(name) == torch.bfloat16
    assert store.shape("model.layers.1.self_attn.k_proj.weight") == (32, 64)
    assert store.shape("model.layers.0.mlp.down_proj.weight") == (64, 96)
    norm = store.read("model.norm.weight").float()
    assert 0.7 < norm.mean() < 1.3  # norms near 1, not N(0, s)
    assert (out / "config.json").exists()
    # The same seed gives the same bytes.
    again = tmp_path / "again"
    assert run(src, "--out", again).returncode == 0
    for shard in set(weight_map.values()):
        assert (out / shard).read_bytes() == (again / shard).read_bytes()


def test_refuses_an_index_the_config_does_not_explain(tmp_path):
    src, weight_map = small_source(tmp_path)
    weight_map["model.layers.0.self_attn.q_norm.weight"] = "model-00001-of-00002.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    r = run(src, "--out", tmp_path / "x")
    assert r.returncode != 0 and "q_norm" in r.stderr
    assert not (tmp_path / "x").exists()


def test_refuses_an_existing_output(tmp_path):
    src, _ = small_source(tmp_path)
    (tmp_path / "out").mkdir()
    r = run(src, "--out", tmp_path / "out")
    assert r.returncode != 0 and "exists" in r.stderr


def test_layers_keeps_the_first_blocks_at_their_true_shapes(tmp_path):
    src, weight_map = small_source(tmp_path)
    out = tmp_path / "one"
    r = run(src, "--layers", 1, "--out", out)
    assert r.returncode == 0, r.stderr
    store = WeightStore(str(out))
    assert not any(".layers.1." in n for n in store.names())
    assert store.shape("model.layers.0.mlp.down_proj.weight") == (64, 96)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    assert run(src, "--layers", 3, "--out", tmp_path / "three").returncode != 0
