"""A Hugging Face model directory through every command a user runs, against transformers and its tokenizer:
export (the tokenizer files come along), generate from a text prompt (same ids and the same text as transformers'
greedy generation with the checkpoint's own tokenizer), quantize with GPTQ calibrated on text, eval (both
protocols), inspect, and a GPTQ export without rounding after the fact (--scale-dtype fp16).

Two directories: a Llama with the real Mistral-7B-v0.3 tokenizer.json (SentencePiece-style BPE, BOS), and a Qwen2
with a byte-level BPE tokenizer trained here on TinyStories (no BOS, EOS <|endoftext|>)."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import PYTHON_DIR, SHARED_DATA, TEXT, lwq, ok
from lwq import safetensors

transformers = pytest.importorskip(
    "transformers", reason="transformers is not importable: the Hugging Face references need it "
                           "(scripts/setup.sh makes .venv with tests/requirements.txt)")
tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not importable (scripts/setup.sh makes .venv)")
pytestmark = pytest.mark.skipif(not TEXT.exists(), reason=f"real test material absent: {TEXT} not found")

MISTRAL = SHARED_DATA / "mistral-7b-v0.3"
PROMPT = "Once upon a time, a little girl named Lily"
NEW_TOKENS = 12


def paragraphs(n):
    return [p for p in TEXT.read_text().split("\n\n") if p.strip()][:n]


def byte_level_tokenizer(directory):
    """A GPT-2-style byte-level BPE trained on TinyStories, saved as transformers saves a tokenizer."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=800, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(paragraphs(400), trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(str(directory))
    return fast


def make_checkpoint(directory, family):
    directory.mkdir()
    if family == "llama":
        if not MISTRAL.exists():
            pytest.skip(f"real test material absent: {MISTRAL} not found")
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (directory / name).write_bytes((MISTRAL / name).read_bytes())
        tok = transformers.PreTrainedTokenizerFast.from_pretrained(str(directory))
        cfg = transformers.LlamaConfig(vocab_size=32768, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    else:
        tok = byte_level_tokenizer(directory)
        eos = tok.convert_tokens_to_ids("<|endoftext|>")
        cfg = transformers.Qwen2Config(vocab_size=len(tok), bos_token_id=None, eos_token_id=eos,
                                       tie_word_embeddings=True, use_sliding_window=False)
    for k, v in dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256).items():
        setattr(cfg, k, v)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # logits that spread, so that greedy has no near-ties
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p.shape[1] ** 0.5))
    model.save_pretrained(str(directory), safe_serialization=True)
    return model, tok


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def checkpoint(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    model, tok = make_checkpoint(root / "hf", request.param)
    r = subprocess.run([sys.executable, "-m", "lwq.export", "--hf", str(root / "hf"), "--out", str(root / "lwq"),
                        "--quiet"], capture_output=True, text=True, cwd=str(PYTHON_DIR), timeout=300)
    assert r.returncode == 0, r.stderr
    calib = root / "calib.txt"
    calib.write_text("\n\n".join(paragraphs(60)[30:]) + "\n")
    evaltext = root / "eval.txt"
    evaltext.write_text("\n\n".join(paragraphs(30)) + "\n")
    return dict(family=request.param, root=root, out=root / "lwq", model=model, tok=tok, calib=calib,
                evaltext=evaltext)


def hf_greedy(model, tok, prompt, n):
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=n, do_sample=False, synced_gpus=False,
                         pad_token_id=tok.eos_token_id)[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in out:  # lwq stops at EOS without emitting it
        out = out[:out.index(tok.eos_token_id)]
    return ids[0].tolist(), out


def test_export_brings_the_tokenizer_and_inspect_shows_family_and_tokenizer(checkpoint):
    out = checkpoint["out"]
    assert (out / "tokenizer.json").exists() and (out / "tokenizer_config.json").exists()
    info = json.loads(ok(lwq("inspect", out / "model.pt", "--json")).stdout)
    text = json.dumps(info)
    assert checkpoint["family"] in text and "tokenizer.json" in text


def test_generate_from_a_text_prompt_matches_transformers(checkpoint):
    out, tok = checkpoint["out"], checkpoint["tok"]
    prompt_ids, expected = hf_greedy(checkpoint["model"], tok, PROMPT, NEW_TOKENS)
    r = json.loads(ok(lwq("generate", "--model", out / "model.pt", "--weights", out, "--tokenizer", out,
                          "--prompt", PROMPT, "--max-tokens", NEW_TOKENS, "--temperature", 0, "--json")).stdout)
    assert r["prompt_tokens"] == len(prompt_ids)
    generated = r["tokens"][len(prompt_ids) - 1:]
    assert generated == expected
    # The streamed text is the prompt and the continuation as the checkpoint's tokenizer decodes them (where that
    # is UTF-8: a random model's byte-level tokens can cut characters, which JSON carries as U+FFFD).
    text = tok.decode(prompt_ids + expected, skip_special_tokens=True)
    if "\ufffd" not in text:
        assert r["text"] == text
    else:
        assert r["text"].startswith(PROMPT)


def test_gptq_on_text_then_eval_and_a_gptq_export(checkpoint, tmp_path):
    out = checkpoint["out"]
    q = tmp_path / "gptq.pt"
    ok(lwq("quantize", "--model", out / "model.pt", "--weights", out, "--algo", "gptq", "--dtype", "int4",
           "--group-size", 32, "--scale-dtype", "fp16", "--calib", checkpoint["calib"], "--tokenizer", out,
           "--nsamples", 8, "--seq-len", 64, "--out", q, "--report", tmp_path / "r.json", "--quiet"))
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["calibration"]["samples"] == 8 and len(report["layers"]) == 14
    nll = {}
    for name, model in (("float", out / "model.pt"), ("gptq", q)):
        weights = ["--weights", out] if name == "float" else []
        r = json.loads(ok(lwq("eval", "--model", model, *weights, "--tokenizer", out, "--text",
                              checkpoint["evaltext"], "--seq-len", 64, "--json")).stdout)
        c = json.loads(ok(lwq("eval", "--model", model, *weights, "--tokenizer", out, "--text",
                              checkpoint["evaltext"], "--seq-len", 64, "--chunked", "--json")).stdout)
        assert r["tokens"] > 500 and c["windows"] > 5
        nll[name] = (r["nll"], c["nll"])
    for f, g in zip(nll["float"], nll["gptq"]):  # int4 g32 of a random model: close to the float NLL
        assert abs(g - f) < 0.05 * f, nll
    ok(lwq("export", "--format", "gptq", q, "--out", tmp_path / "ckpt"))
    names = safetensors.WeightStore(str(tmp_path / "ckpt")).names()
    assert "model.layers.1.mlp.down_proj.qweight" in names and "model.embed_tokens.weight" in names
