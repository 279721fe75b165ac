#!/usr/bin/env python3
"""Writes a synthetic Hugging Face checkpoint with a real model's exact layout: every tensor its config implies,
under the names and in the shard files its model.safetensors.index.json gives, with seeded random values.

The real files ship without their weights (../shared/data/mistral-7b-v0.3: config.json and the shard index);
this makes a checkpoint of the true size and sharding for memory, speed and sharded-loading checks:

  /usr/bin/python3 scripts/make_synthetic_checkpoint.py ../shared/data/mistral-7b-v0.3 --out /tmp/mistral-7b

The sizes come from config.json (Llama/Mistral-style decoders: embed_tokens, per layer q/k/v/o, gate/up/down and
two RMSNorms, norm, lm_head); the script refuses when a name in the index is not one it can size, and when the
bytes it would write differ from the index's metadata.total_size. One row block at a time is generated and written,
so memory stays small. Linear weights are N(0, 1/in_features) (activations stay in range through all the layers),
norm weights 1 + N(0, 0.05^2). The small files beside the index (tokenizer, generation config) are copied.
"""

import argparse
import json
import math
import os
import re
import shutil
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from lwq.safetensors import DTYPE_NAMES, INDEX_NAME, _as_bytes, element_size, header_bytes  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
COPIED = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
          "special_tokens_map.json"]
ROW_BLOCK_VALUES = 1 << 24


def tensor_shapes(config: dict) -> dict:
    """Shape of every tensor name a Llama/Mistral-style config implies."""
    h = config["hidden_size"]
    inter = config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads", heads)
    hd = config.get("head_dim") or h // heads
    vocab = config["vocab_size"]
    per_layer = {
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (heads * hd, h),
        "self_attn.k_proj.weight": (kv * hd, h),
        "self_attn.v_proj.weight": (kv * hd, h),
        "self_attn.o_proj.weight": (h, heads * hd),
        "mlp.gate_proj.weight": (inter, h),
        "mlp.up_proj.weight": (inter, h),
        "mlp.down_proj.weight": (h, inter),
    }
    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,)}
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, h)
    for i in range(config["num_hidden_layers"]):
        for name, shape in per_layer.items():
            shapes[f"model.layers.{i}.{name}"] = shape
    return shapes


def values(name: str, shape, dtype: torch.dtype, gen: torch.Generator):
    """Row blocks of the tensor's synthetic values."""
    rows = shape[0]
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    step = max(1, ROW_BLOCK_VALUES // cols)
    is_norm = len(shape) == 1
    std = 0.05 if is_norm else 1.0 / math.sqrt(shape[1])
    for r in range(0, rows, step):
        n = min(step, rows - r)
        block = torch.randn((n,) + tuple(shape[1:]), generator=gen) * std
        if is_norm:
            block += 1.0
        yield block.to(dtype)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="directory with config.json and model.safetensors.index.json")
    p.add_argument("--out", help="the checkpoint directory to write (must not exist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="check the layout and print the sizes, write nothing")
    p.add_argument("--layers", type=int, help="keep only the first N layers (the blocks keep their true shapes; "
                   "config.json and the index say N; the total size is not checked)")
    args = p.parse_args(argv)

    with open(os.path.join(args.source, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(args.source, INDEX_NAME)) as f:
        index = json.load(f)
    dtype = DTYPES.get(config.get("torch_dtype", "bfloat16"))
    if dtype is None:
        sys.exit(f"{args.source}/config.json: torch_dtype {config.get('torch_dtype')!r} is not one of {list(DTYPES)}")
    shapes = tensor_shapes(config)
    weight_map = index["weight_map"]
    full_layers = config["num_hidden_layers"]
    if args.layers is not None:
        if not 0 < args.layers <= full_layers:
            sys.exit(f"--layers {args.layers}: the model has {full_layers} layers")
        config = dict(config, num_hidden_layers=args.layers)
        shapes = tensor_shapes(config)
        layer = re.compile(r"\.layers\.(\d+)\.")
        weight_map = {n: f for n, f in weight_map.items()
                      if not layer.search(n) or int(layer.search(n).group(1)) < args.layers}
    unknown = sorted(set(weight_map) - set(shapes))
    missing = sorted(set(shapes) - set(weight_map))
    if unknown or missing:
        sys.exit(f"{args.source}: the index and config.json disagree: names the config does not imply "
                 f"{unknown[:5]}, names the index lacks {missing[:5]}")
    total = sum(math.prod(s) * element_size(dtype) for s in shapes.values())
    expected = index.get("metadata", {}).get("total_size")
    if expected is not None and expected != total and args.layers is None:
        sys.exit(f"{args.source}: config.json implies {total} bytes of {DTYPE_NAMES[dtype]} tensors, the index says "
                 f"{expected}")
    shards = {}
    for name in sorted(weight_map):  # names sorted within a shard, as Hugging Face writes them
        shards.setdefault(weight_map[name], []).append(name)
    print(f"{len(shapes)} tensors, {total / 1e9:.2f} GB of {DTYPE_NAMES[dtype]} in {len(shards)} shards")
    if args.dry_run:
        return 0
    if not args.out:
        p.error("--out is required unless --dry-run")
    if os.path.exists(args.out):
        sys.exit(f"{args.out} exists: give a new directory")
    tmp = args.out.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for file_name in sorted(shards):
        names = shards[file_name]
        entries = [(n, shapes[n], dtype) for n in names]
        with open(os.path.join(tmp, file_name), "wb") as f:
            f.write(header_bytes(entries, {"format": "pt"}))
            for n in names:
                for block in values(n, shapes[n], dtype, gen):
                    f.write(_as_bytes(block.contiguous()))
            f.flush()
            os.fsync(f.fileno())
        print(f"{file_name}: {len(names)} tensors ({time.time() - start:.0f} s)", flush=True)
    with open(os.path.join(tmp, INDEX_NAME), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")
    for name in COPIED:
        if os.path.exists(os.path.join(args.source, name)):
            shutil.copyfile(os.path.join(args.source, name), os.path.join(tmp, name))
    with open(os.path.join(tmp, "config.json"), "w") as f:  # the layer count actually written
        json.dump(config, f, indent=2)
        f.write("\n")
    os.rename(tmp, args.out)
    print(f"wrote {args.out} in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
