"""lwq.export --hf on each Hugging Face family it supports (llama, mistral, qwen2, gemma2, phi3), against transformers
itself: small random models built and saved with transformers, exported, and compared on logits (fp32, eager
attention) and on 32 greedy tokens through lwq's key/value cache. Then the refusals, and the real tool: quantize and
`lwq export --format gptq` keep the checkpoint's tensor names.

The per-family numbers of docs/model-families.md come from this file:
  LWQ_FAMILY_REPORT=1 .venv/bin/python -m pytest -q -s tests/python/test_hf_families.py -k agrees"""
import json
import os
import types

import pytest
import torch

from conftest import lwq, ok
from lwq import export as exporter
from lwq import safetensors

transformers = pytest.importorskip(
    "transformers", reason="transformers is not importable: the Hugging Face references need it "
                           "(scripts/setup.sh makes .venv with tests/requirements.txt)")

SEQ = 24        # tokens per compared sequence: longer than the sliding windows below
GREEDY = 32     # generated tokens compared
PROMPT = [3, 17, 42, 5]
MAX_SEQ = 64    # rotary positions exported (--max-seq-len): PROMPT + GREEDY fit

COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=256, max_position_embeddings=128, rms_norm_eps=1e-6)

# id -> (config class, its fields, save options). Together: GQA, tied and untied heads, llama3 and linear rotary
# scaling, sliding windows shorter than SEQ, soft-caps that bite, biases, fused projections, bf16 in shards.
CASES = {
    "llama-untied": ("LlamaConfig", dict(tie_word_embeddings=False), {}),
    "llama3-tied-scaled": ("LlamaConfig", dict(
        tie_word_embeddings=True, rope_theta=500000.0, num_hidden_layers=3, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16}), {}),
    "llama-linear-bf16-sharded": ("LlamaConfig", dict(
        tie_word_embeddings=False, rope_scaling={"type": "linear", "factor": 2.0}),
        dict(dtype=torch.bfloat16, max_shard_size="40KB")),
    "mistral-sliding": ("MistralConfig", dict(sliding_window=8, tie_word_embeddings=False, head_dim=16), {}),
    "qwen2-bias": ("Qwen2Config", dict(tie_word_embeddings=True, use_sliding_window=False, sliding_window=8), {}),
    "gemma2": ("Gemma2Config", dict(
        num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=24, sliding_window=8, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0, hidden_activation="gelu_pytorch_tanh"), {}),
    "phi3-fused": ("Phi3Config", dict(tie_word_embeddings=False, sliding_window=None, pad_token_id=0), {}),
}


def randomize(model, seed):
    """Weights large enough that logits spread (greedy has no near-ties) and norms that are not all one value (a
    misplaced norm would not show otherwise)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / p.shape[1] ** 0.5))


def reference(src):
    """The saved checkpoint loaded by transformers in fp32 (buffers such as inv_freq recomputed, not rounded)."""
    return transformers.AutoModelForCausalLM.from_pretrained(str(src), torch_dtype=torch.float32,
                                                             attn_implementation="eager").eval()


def hf_model(case, seed=0):
    cls_name, fields, _ = CASES[case]
    cfg = getattr(transformers, cls_name)(**{**COMMON, **fields, "attn_implementation": "eager"})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32).eval()
    randomize(model, seed)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model


def export(*args):
    return exporter.main([str(a) for a in args] + ["--quiet"])


def exported_module(directory):
    module = torch.jit.load(str(directory / "model.pt"))
    safetensors.load_into_module(module, str(directory))
    return module


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """Each case: the transformers model (fp32, as saved), its directory, and lwq's export of it loaded."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for case, (_, _, save) in CASES.items():
        model = hf_model(case)
        src = root / case
        dtype = save.get("dtype", torch.float32)
        model.to(dtype).save_pretrained(str(src), safe_serialization=True,
                                        **{k: v for k, v in save.items() if k != "dtype"})
        model = reference(src)  # fp32 compute on the stored (maybe bf16-rounded) values
        assert export("--hf", src, "--out", root / f"{case}.lwq", "--max-seq-len", MAX_SEQ) == 0
        out[case] = (model, src, root / f"{case}.lwq")
    return out


def lwq_greedy(module, prompt, steps):
    cache = module.init_cache(1, len(prompt) + steps)
    logits = module.forward_cached(torch.tensor([prompt]), 0, cache)
    tokens = []
    for pos in range(len(prompt), len(prompt) + steps):
        tokens.append(int(logits[0, -1].argmax()))
        logits = module.forward_cached(torch.tensor([[tokens[-1]]]), pos, cache)
    return tokens


@pytest.mark.parametrize("case", list(CASES))
def test_family_agrees_with_transformers(families, case, monkeypatch):
    model, src, out = families[case]
    module = exported_module(out)
    if not hasattr(torch, "_dynamo"):
        # Gemma2's HybridCache marks its tensors for torch.compile (torch 2); on torch 1.13 that is a no-op.
        monkeypatch.setattr(torch, "_dynamo", types.SimpleNamespace(mark_static_address=lambda t: None,
                                                                    is_compiling=lambda: False), raising=False)
    ids = torch.randint(0, COMMON["vocab_size"], (3, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids).logits
        got = module(ids)
        rel = float((got - expected).abs().max() / expected.abs().max())
        # synced_gpus given: left None, transformers imports torch.distributed.fsdp, which fails on Debian's torch.
        reference = model.generate(torch.tensor([PROMPT]), max_new_tokens=GREEDY, min_new_tokens=GREEDY,
                                   do_sample=False, eos_token_id=None, pad_token_id=0,
                                   synced_gpus=False)[0, len(PROMPT):].tolist()
        mine = lwq_greedy(module, PROMPT, GREEDY)
    agree = sum(a == b for a, b in zip(mine, reference))
    if os.environ.get("LWQ_FAMILY_REPORT"):
        print(f"\n| {case} | {rel:.2e} | {agree}/{GREEDY} |")
    assert rel <= 1e-4, (case, rel)
    assert mine == reference, (case, mine, reference)


def test_exported_names_are_the_checkpoints(families):
    for case, (model, src, out) in families.items():
        names = set(safetensors.WeightStore(str(out)).names())
        hf_names = set(safetensors.WeightStore(str(src)).names())
        tied = model.config.tie_word_embeddings
        # A tied checkpoint has no lm_head.weight; lwq stores the head anyway (a copy of the embedding).
        assert names == hf_names | ({"lm_head.weight"} if tied else set()), case
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == model.config.model_type and config["layout"] == "hf", case


def test_bf16_sharded_checkpoint_keeps_its_dtype(families):
    _, src, out = families["llama-linear-bf16-sharded"]
    assert (src / "model.safetensors.index.json").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bf16"
    stored, original = safetensors.WeightStore(str(out)), safetensors.WeightStore(str(src))
    for name in original.names():
        assert torch.equal(stored.read(name), original.read(name)), name


def write_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("changes, needles", [
    (dict(model_type="falcon"), ["model_type 'falcon' is not supported", "llama, mistral, qwen2, gemma2, phi3"]),
    (dict(model_type="qwen3"), ["model_type 'qwen3' is not supported", "no reference"]),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), ["rope_scaling type 'yarn' is not supported",
                                                               "linear, llama3"]),
    (dict(rope_scaling={"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}),
     ["rope_scaling type 'longrope' is not supported"]),
    (dict(hidden_act="gelu"), ["hidden_act 'gelu' is not supported", "'silu'"]),
    (dict(attention_bias=True), ["attention_bias True is not supported", "qwen2"]),
    (dict(use_sliding_window=True, sliding_window=8, max_window_layers=1), ["use_sliding_window True is not supported"]),
])
def test_refusals_name_what_is_unsupported(families, tmp_path, capsys, changes, needles):
    case = "qwen2-bias" if "use_sliding_window" in changes else "llama-untied"
    src = tmp_path / "hf"
    src.mkdir()
    for f in families[case][1].iterdir():
        (src / f.name).symlink_to(f)
    (src / "config.json").unlink()
    (src / "config.json").write_text((families[case][1] / "config.json").read_text())
    write_config(src, **changes)
    assert export("--hf", src, "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["phi3-fused", "qwen2-bias"])
def test_quantized_family_exports_gptq_under_the_checkpoints_names(families, tmp_path, case):
    model, src, out = families[case]
    q = tmp_path / "q.pt"
    ok(lwq("quantize", "--model", out / "model.pt", "--weights", out / "model.safetensors", "--algo", "rtn",
           "--dtype", "int4", "--group-size", "32", "--out", q, "--quiet"))
    gptq = tmp_path / "gptq"
    ok(lwq("export", "--format", "gptq", "--round-scales", q, gptq))
    header = safetensors.WeightStore(str(gptq)).names()
    linears = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"}
    assert linears and {n.rsplit(".", 1)[0] for n in header if n.endswith(".qweight")} == linears
    if case == "phi3-fused":
        assert "model.layers.0.self_attn.qkv_proj.qweight" in header
        assert "model.layers.0.mlp.gate_up_proj.qweight" in header
    else:
        assert "model.layers.0.self_attn.q_proj.bias" in header
