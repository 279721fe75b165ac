#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target (fuzz/corpus/NAME/) from valid inputs made here, and the
regression inputs of the crashes issue 19 reported (fuzz/regressions/NAME/). Run it again after changing a
format; the files are committed.

  LWQ_BUILD_DIR=build .venv/bin/python fuzz/make_seeds.py

Needs the built liblwq_ops.so (and tokenizers, sentencepiece from .venv for the tokenizer seeds) (packed states are made by lwq's own quantizer). Deterministic (fixed seeds)."""

import json
import os
import struct
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
from lwq.safetensors import _as_bytes, header_bytes  # noqa: E402

BUILD = os.environ.get("LWQ_BUILD_DIR", os.path.join(ROOT, "build"))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
REGRESSIONS = os.path.join(ROOT, "fuzz", "regressions")


def put(directory: str, name: str, data: bytes) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def safetensors_bytes(tensors, metadata=None) -> bytes:
    entries = [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    data = b"".join(bytes(_as_bytes(t)) if t.numel() else b""
                    for t in tensors.values())
    return header_bytes(entries, metadata) + data


def deep_json(levels: int) -> str:
    return "[" * levels + "]" * levels


def safetensors_seeds() -> None:
    d = os.path.join(CORPUS, "safetensors")
    g = torch.Generator().manual_seed(0)
    put(d, "f32", safetensors_bytes({"w": torch.randn(3, 5, generator=g), "b": torch.randn(5, generator=g)},
                                    {"format": "pt"}))
    put(d, "mixed", safetensors_bytes({"a.f16": torch.randn(4, 4, generator=g).half(),
                                       "a.bf16": torch.randn(2, 3, generator=g).bfloat16(),
                                       "a.i32": torch.arange(6, dtype=torch.int32).view(2, 3),
                                       "a.u8": torch.arange(7, dtype=torch.uint8),
                                       "scalar": torch.tensor(1.5)}))
    put(d, "empty_table", safetensors_bytes({}, {"k": "v"}))
    put(d, "zero_size", safetensors_bytes({"z": torch.zeros(0, 4)}))
    # The crash issue 19 reported: __metadata__ nested 100,000 levels deep (a stack overflow before the bound).
    header = ('{"__metadata__":' + deep_json(100_000) + "}").encode()
    header += b" " * (-len(header) % 8)
    put(os.path.join(REGRESSIONS, "safetensors"), "deep_metadata", struct.pack("<Q", len(header)) + header)


def llama2c_tokenizer_bytes(extra) -> bytes:
    pieces = [("<unk>", 0.0), ("\n<s>\n", 0.0), ("\n</s>\n", 0.0)]
    pieces += [(f"<0x{b:02X}>", 0.0) for b in range(256)]
    pieces += extra
    out = struct.pack("<i", max(len(p.encode()) for p, _ in pieces))
    for p, score in pieces:
        b = p.encode()
        out += struct.pack("<fi", score, len(b)) + b
    return out


def tokenizer_seeds() -> None:
    d = os.path.join(CORPUS, "llama2c_tokenizer")
    extra = [(" ", -1.0), ("O", -2.0), ("n", -3.0), ("c", -4.0), ("e", -5.0), ("On", -0.5), ("ce", -0.6),
             (" Once", -0.1), ("\xe9", -7.0), (" t", -0.2), ("im", -0.3)]
    full = llama2c_tokenizer_bytes(extra)
    put(d, "small", full)
    put(d, "bytes_only", llama2c_tokenizer_bytes([]))
    put(os.path.join(REGRESSIONS, "llama2c_tokenizer"), "cut_in_a_piece", full[: len(full) - 3])


def config_seeds() -> None:
    d = os.path.join(CORPUS, "config_rules")
    put(d, "rules", json.dumps({
        "algorithm": "rtn", "dtype": "int4", "group_size": 128, "sym": False,
        "exclude": ["lm_head"],
        "layers": [{"match": r"layers\.0\..*", "dtype": "int8", "group_size": -1},
                   {"match": "down_proj", "algorithm": "rtn", "sym": True, "dtype": "nf4", "group_size": 32}],
    }).encode())
    put(d, "include", json.dumps({"include": [r"mlp\.(up|gate)_proj"], "dtype": "int3", "group_size": 32})
        .encode())
    put(os.path.join(REGRESSIONS, "config_rules"), "deep_rules", ('{"layers":' + deep_json(100_000) + "}").encode())


def state_bytes(state, dtype_index: int) -> bytes:
    version, _, out, k, group, sym, qweight, scales, zeros, g_idx = state
    flags = (1 if sym else 0) | (2 if zeros is not None else 0) | (4 if g_idx is not None else 0)
    b = struct.pack("<BBHHhB", version, dtype_index, out, k, group, flags)
    for t, fmt in ((qweight, torch.uint8), (scales, torch.float32), (zeros, torch.uint8), (g_idx, torch.int32)):
        t = torch.zeros(0, dtype=fmt) if t is None else t.to(fmt).contiguous().view(-1)
        b += struct.pack("<I", t.numel()) + (bytes(_as_bytes(t)) if t.numel() else b"")
    return b


def packed_state_seeds(ops) -> None:
    d = os.path.join(CORPUS, "packed_state")
    dtypes = ["int8", "int4", "int4_fullrange", "int3", "int2", "nf4", "fp4_e2m1"]
    g = torch.Generator().manual_seed(1)
    cases = [(8, 40, 16, False), (5, 33, 32, True), (16, 64, -1, True), (3, 7, 4, False)]
    for i, dtype in enumerate(dtypes):
        for j, (out, k, group, sym) in enumerate(cases):
            if not sym and dtype in ("nf4", "fp4_e2m1", "int4_fullrange"):
                sym = True
            w = torch.randn(out, k, generator=g)
            packed = ops.quantize_weight(w, dtype, group, sym)
            put(d, f"{dtype}_{j}", state_bytes(packed.__getstate__()[0], i))
    # act-order: a permuted g_idx
    w = torch.randn(6, 48, generator=g)
    q, scales, zeros, _ = ops.unpack_weight(ops.quantize_weight(w, "int4", 16, False))
    g_idx = (torch.randperm(48, generator=g) // 16).to(torch.int32)
    packed = ops.pack_weight(q, scales, zeros, "int4", 16, g_idx)
    put(d, "int4_g_idx", state_bytes(packed.__getstate__()[0], 1))


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQ's int32 bit streams along dim 0 (bits dividing 32)."""
    rows, cols = codes.shape
    per = 32 // bits
    c = codes.to(torch.int64).view(rows // per, per, cols)
    words = torch.zeros(rows // per, cols, dtype=torch.int64)
    for i in range(per):
        words |= c[:, i, :] << (bits * i)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def gptq_seeds() -> None:
    d = os.path.join(CORPUS, "gptq_checkpoint")
    g = torch.Generator().manual_seed(2)
    for bits, group, sym, desc_act in ((4, 16, True, False), (8, -1, False, False), (2, 32, False, True)):
        k, n = 64, 32
        groups = 1 if group == -1 else k // group
        codes = torch.randint(0, 2 ** bits, (k, n), generator=g)
        zeros = torch.full((groups, n), 2 ** (bits - 1)) if sym else torch.randint(1, 2 ** bits, (groups, n),
                                                                                  generator=g)
        tensors = {
            "layers.0.mlp.up_proj.qweight": pack_rows(codes, bits),
            "layers.0.mlp.up_proj.qzeros": pack_rows((zeros - 1).t().contiguous(), bits).t().contiguous(),
            "layers.0.mlp.up_proj.scales": (torch.rand(groups, n, generator=g) * 0.1 + 0.01).half(),
            "layers.0.mlp.up_proj.bias": torch.zeros(n).half(),
        }
        if group != -1:
            g_idx = torch.arange(k, dtype=torch.int32) // group
            if desc_act:
                g_idx = g_idx[torch.randperm(k, generator=g)]
            tensors["layers.0.mlp.up_proj.g_idx"] = g_idx
        config = json.dumps({"bits": bits, "group_size": group, "desc_act": desc_act, "sym": sym,
                             "quant_method": "gptq", "checkpoint_format": "gptq"}).encode()
        put(d, f"bits{bits}_g{group}", struct.pack("<I", len(config)) + config + safetensors_bytes(tensors))
    config = ('{"bits": 4, "group_size": 128, "lwq_dtypes": ' + deep_json(100_000) + "}").encode()
    put(os.path.join(REGRESSIONS, "gptq_checkpoint"), "deep_config",
        struct.pack("<I", len(config)) + config + safetensors_bytes({}))


SENTENCES = ["Once upon a time there was a small robot.", "It liked to count: 1, 2, 3, 42 and 1000!",
             "The cat sat on the mat, and the dog ran after the ball.", "Caf\u00e9 na\u00efve \u65e5\u672c\u8a9e "
             "\U0001F600 emoji", "  spaces\tand\ttabs\n\nnew lines  "] * 20


def hf_tokenizer_seeds() -> None:
    """tokenizer.json files of both kinds real models use, trained here on the sentences above."""
    try:
        import tokenizers
        from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers
    except ImportError:
        print("hf_tokenizer_json: tokenizers is not importable (run with .venv/bin/python); seeds left as they are")
        return
    d = os.path.join(CORPUS, "hf_tokenizer_json")
    byte_level = tokenizers.Tokenizer(models.BPE())
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    byte_level.decoder = decoders.ByteLevel()
    byte_level.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    put(d, "byte_level", byte_level.to_str().encode())
    split = tokenizers.Tokenizer(models.BPE(ignore_merges=True))
    split.normalizer = normalizers.NFC()
    split.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                                              r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                             behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    split.decoder = decoders.ByteLevel()
    split.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|begin_of_text|>", "<|eot_id|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    put(d, "llama3_split", split.to_str().encode())
    metaspace = tokenizers.Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    metaspace.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                           decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    metaspace.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]))
    put(d, "metaspace_byte_fallback", metaspace.to_str().encode())


def sentencepiece_seeds() -> None:
    try:
        import io
        import sentencepiece
    except ImportError:
        print("sentencepiece_model: sentencepiece is not importable (run with .venv/bin/python); seeds left as they are")
        return
    for kind in ("bpe", "unigram"):
        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES), model_writer=model,
                                                 vocab_size=320, model_type=kind, byte_fallback=True, hard_vocab_limit=False,
                                                 normalization_rule_name="identity",
                                                 minloglevel=2)
        put(os.path.join(CORPUS, "sentencepiece_model"), kind, model.getvalue())


def main() -> int:
    torch.ops.load_library(os.path.join(BUILD, "lib", "liblwq_ops.so"))
    safetensors_seeds()
    tokenizer_seeds()
    config_seeds()
    packed_state_seeds(torch.ops.lwq)
    gptq_seeds()
    hf_tokenizer_seeds()
    sentencepiece_seeds()
    for top in (CORPUS, REGRESSIONS):
        for name in sorted(os.listdir(top)):
            print(f"{os.path.relpath(os.path.join(top, name), ROOT)}: {len(os.listdir(os.path.join(top, name)))} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
