"""Export a model to lwq's model directory: a TorchScript archive with empty (meta) parameters plus the weights in
safetensors, which `lwq quantize`, eval and generate read (README.md, "Exporting a model"; docs/model-contract.md).
Run it as `/usr/bin/python3 -m lwq.export ...` (or through scripts/export_llama.py in a source checkout).

Sources: a llama2.c legacy checkpoint (--llama2c FILE), a Hugging Face directory (--hf DIR: config.json and
model.safetensors or a sharded index, bf16/fp16/fp32; model_type llama, mistral, qwen2, gemma2 or phi3, names and
values kept as the checkpoint has them; docs/model-families.md), or seeded random weights of a preset shape
(--synthetic PRESET). A model_type, rope_scaling type or option that lwq's model does not implement is refused.

The directory written (--out DIR) holds:
  model.pt          torch.jit.script of lwq.llama's model (LlamaModel for llama2c and synthetic, CausalLM for hf)
                    with meta parameters (small); the rotary tables rope_cos / rope_sin are real buffers in it
  model.safetensors every parameter under its qualified name in the chosen dtype, or, above --shard-size bytes,
                    model-0000i-of-0000n.safetensors + model.safetensors.index.json (Hugging Face's weight_map)
  tokenizer files   --hf: the checkpoint's tokenizer.json, tokenizer.model, tokenizer_config.json,
                    special_tokens_map.json and generation_config.json, copied as they are (the tool's
                    --tokenizer DIR reads them)
  config.json       the shape and provenance (architecture, dim, hidden_dim, n_layers, n_heads, n_kv_heads,
                    vocab_size, max_seq_len, norm_eps, rope_theta, tied_embeddings, dtype, source, ...; the
                    family switches that differ from llama2.c's; for --hf also the original config's fields,
                    model_type included)

Streaming: one tensor at a time is read or generated, converted and appended to its file, so memory stays about the
size of the largest tensor whatever the model size. The directory is built next to DIR under a temporary name and
renamed into place at the end: an interrupted export leaves no half-written model.
"""

import argparse
import json
import math
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional

import torch

from . import llama2c, safetensors
from .llama import LlamaConfig, build_model, synthetic_blocks

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
DEFAULT_SHARD_SIZE = 2 << 30
READ_BLOCK = 1 << 22  # values per row block read from a checkpoint (bounds memory whatever the tensor size)
FORMAT_VERSION = 1

PRESETS: Dict[str, LlamaConfig] = {
    # The real stories260K's shape (llama2.c's tinyllamas).
    "stories260K": LlamaConfig(dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512,
                               max_seq_len=512, norm_eps=1e-5, rope_theta=10000.0, tied_embeddings=True),
    # Llama 3.2 1B's shape (rotary tables cut to 8192 positions, the pre-scaling context; no rope scaling).
    "llama-3.2-1b-like": LlamaConfig(dim=2048, hidden_dim=8192, n_layers=16, n_heads=32, n_kv_heads=8,
                                     vocab_size=128256, max_seq_len=8192, norm_eps=1e-5, rope_theta=500000.0,
                                     tied_embeddings=True),
    # Llama 2 7B's shape.
    "llama-2-7b-like": LlamaConfig(dim=4096, hidden_dim=11008, n_layers=32, n_heads=32, n_kv_heads=32,
                                   vocab_size=32000, max_seq_len=4096, norm_eps=1e-5, rope_theta=10000.0,
                                   tied_embeddings=False),
    # Llama 2 7B's layer shape with 20 layers: 4.31 G parameters, 8.0 GiB in fp16 (memory benchmarks).
    "llama-8gb": LlamaConfig(dim=4096, hidden_dim=11008, n_layers=20, n_heads=32, n_kv_heads=32,
                             vocab_size=32000, max_seq_len=4096, norm_eps=1e-5, rope_theta=10000.0,
                             tied_embeddings=False),
}


class ExportError(Exception):
    """A problem with the user's input (printed without a traceback)."""


def parse_size(text: str) -> int:
    """Bytes from "123", "500MB", "2GiB", "64KiB" (decimal kB/MB/GB, binary KiB/MiB/GiB)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1000000, 500MB, 2GiB)")
    unit = m.group(2).upper().rstrip("B")
    scale = {"": 1, "K": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "T": 1000 ** 4,
             "KI": 1 << 10, "MI": 1 << 20, "GI": 1 << 30, "TI": 1 << 40}.get(unit)
    if scale is None:
        raise argparse.ArgumentTypeError(f"unknown size unit in {text!r}")
    value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


# ----------------------------------------------------------------------------------------------------------------
# Sources: a config, and each parameter (by lwq.llama name) as consecutive row blocks


def row_ranges(shape, block: Optional[int] = None) -> Iterator[tuple]:
    """(start, stop) row ranges of about `block` (default READ_BLOCK) values covering dimension 0 of `shape`."""
    step = max(1, (block or READ_BLOCK) // max(1, math.prod(shape[1:])))
    for start in range(0, shape[0], step):
        yield start, min(start + step, shape[0])


class Source:
    config: LlamaConfig
    description: str
    default_dtype: torch.dtype
    extra: Dict[str, object]  # added to config.json
    # Files copied into the model directory as they are (a Hugging Face checkpoint's tokenizer and its configs), so
    # that `--tokenizer DIR` of the tool finds them beside the model.
    companions: List[str] = []

    def blocks(self, name: str) -> Iterator[torch.Tensor]:
        """Parameter `name` as row blocks, in order (any float dtype; converted by the exporter)."""
        raise NotImplementedError(f"{type(self).__name__} must define blocks()")


class Llama2cSource(Source):
    def __init__(self, path: str):
        try:
            self.checkpoint = llama2c.Checkpoint(path)
            self.checkpoint.check_rotary()
        except (ValueError, OSError) as e:
            raise ExportError(str(e)) from None
        self.config = self.checkpoint.config
        self.description = f"llama2c {os.path.abspath(path)}"
        self.default_dtype = torch.float32
        self.extra = {"bos_token_id": llama2c.BOS, "eos_token_id": llama2c.EOS}

    def blocks(self, name: str) -> Iterator[torch.Tensor]:
        for start, stop in row_ranges(self.checkpoint.shape(name)):
            yield self.checkpoint.read(name, start, stop)


# Hugging Face model_type -> what lwq's model needs switched on for it (see hf_family_config for the per-family
# checks). qwen3 is refused: transformers 4.51 (its first release) does not import on torch 1.13, so lwq has no
# reference to check its q/k norms against.
HF_FAMILIES = ("llama", "mistral", "qwen2", "gemma2", "phi3")
HF_REFUSED_FAMILIES = {
    "qwen3": "its per-head q/k RMSNorm is not implemented: transformers 4.51+, the first with Qwen3, does not "
             "import on torch 1.13, so there is no reference to check it against",
}
SUPPORTED_ROPE = ("linear", "llama3")


def hf_family_config(hf: Dict[str, object], what: str) -> LlamaConfig:
    """lwq's config for a Hugging Face config.json dict; ExportError naming the field when the family, rotary
    scaling or an option would change the math in a way lwq does not implement."""
    model_type = hf.get("model_type")
    if model_type in HF_REFUSED_FAMILIES:
        raise ExportError(f"{what}: model_type {model_type!r} is not supported: {HF_REFUSED_FAMILIES[model_type]} "
                          f"(supported: {', '.join(HF_FAMILIES)})")
    if model_type not in HF_FAMILIES:
        raise ExportError(f"{what}: model_type {model_type!r} is not supported (supported: {', '.join(HF_FAMILIES)})")

    def refuse(field: str, value: object, supported: str) -> None:
        raise ExportError(f"{what}: {model_type} with {field} {value!r} is not supported ({supported})")

    act_field = "hidden_activation" if model_type == "gemma2" and hf.get("hidden_activation") else "hidden_act"
    act = hf.get(act_field, "gelu_pytorch_tanh" if model_type == "gemma2" else "silu")
    wanted_act = "gelu_pytorch_tanh" if model_type == "gemma2" else "silu"
    if act != wanted_act:
        refuse(act_field, act, f"supported: {wanted_act!r}")
    biases = {"llama": ("attention_bias", "mlp_bias"), "mistral": ("attention_bias",), "phi3": ("attention_bias",),
              "gemma2": ("attention_bias",), "qwen2": ()}[model_type]
    for flag in biases:
        if hf.get(flag):
            refuse(flag, hf[flag], "lwq implements biases only on qwen2's q/k/v projections")
    if float(hf.get("partial_rotary_factor", 1.0) or 1.0) != 1.0:
        refuse("partial_rotary_factor", hf["partial_rotary_factor"], "supported: 1.0, rotary on the whole head")
    scaling = hf.get("rope_scaling")
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else scaling
        if kind == "default":
            scaling = None
        elif kind not in SUPPORTED_ROPE:
            raise ExportError(f"{what}: rope_scaling type {kind!r} is not supported "
                              f"(supported: {', '.join(SUPPORTED_ROPE)})")
    try:
        dim, heads, layers = int(hf["hidden_size"]), int(hf["num_attention_heads"]), int(hf["num_hidden_layers"])
        cfg = LlamaConfig(
            dim=dim, hidden_dim=int(hf["intermediate_size"]), n_layers=layers, n_heads=heads,
            n_kv_heads=int(hf.get("num_key_value_heads") or heads), vocab_size=int(hf["vocab_size"]),
            max_seq_len=int(hf.get("max_position_embeddings", 2048)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=float(hf.get("rope_theta", 10000.0)),
            tied_embeddings=bool(hf.get("tie_word_embeddings", model_type == "gemma2")),
            head_dim=int(hf.get("head_dim") or dim // heads), rope_scaling=scaling, layout="hf", rope_style="half")
        window = int(hf.get("sliding_window") or 0)
        if model_type in ("mistral", "phi3") and window:
            # transformers' eager mask applies config.sliding_window to every layer.
            cfg.sliding_windows = [window] * layers
        elif model_type == "qwen2":
            cfg.qkv_bias = True
            # transformers 4.48's eager and sdpa attention ignore it (only flash attention applies it, from
            # max_window_layers on): no reference lwq could be checked against.
            if hf.get("use_sliding_window") and window and int(hf.get("max_window_layers", layers)) < layers:
                refuse("use_sliding_window", True, "supported: false")
        elif model_type == "gemma2":
            cfg.norm_unit_offset = cfg.sandwich_norms = cfg.embed_scale = True
            cfg.activation = "gelu_tanh"
            cfg.query_pre_attn_scalar = float(hf.get("query_pre_attn_scalar") or cfg.head_dim)
            cfg.attn_softcap = float(hf.get("attn_logit_softcapping") or 0.0)
            cfg.final_softcap = float(hf.get("final_logit_softcapping") or 0.0)
            if window:  # even layers slide (Gemma2DecoderLayer.is_sliding), odd ones see everything
                cfg.sliding_windows = [window if i % 2 == 0 else 0 for i in range(layers)]
        elif model_type == "phi3":
            cfg.fused_qkv = cfg.fused_gate_up = True
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{what}: missing or malformed field {e}") from None
    return cfg


# The tokenizer files and generation settings of a Hugging Face directory.
HF_COMPANIONS = ["tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json"]


class HfSource(Source):
    """A Hugging Face *ForCausalLM directory (HF_FAMILIES): config.json + safetensors (one file or an index with
    shards). Names and values are the checkpoint's own (the hf layout of lwq.llama)."""

    SUPPORTED_ROPE = SUPPORTED_ROPE

    def __init__(self, directory: str):
        cfg_path = os.path.join(directory, "config.json")
        try:
            with open(cfg_path) as f:
                hf = json.load(f)
        except (OSError, ValueError) as e:
            raise ExportError(f"{cfg_path}: cannot read the Hugging Face config: {e}") from None
        if not isinstance(hf, dict):
            raise ExportError(f"{cfg_path}: not a Hugging Face config (a JSON object)")
        self.config = hf_family_config(hf, cfg_path)
        try:
            self.config.validate(cfg_path)
        except ValueError as e:
            raise ExportError(str(e)) from None

        try:
            self.store = safetensors.WeightStore(directory)
        except (ValueError, OSError) as e:
            bins = [n for n in os.listdir(directory) if n.startswith("pytorch_model") and n.endswith(".bin")]
            hint = " (pytorch_model*.bin checkpoints are not supported: convert them to safetensors)" if bins else ""
            raise ExportError(f"{e}{hint}") from None
        self.names = {name: self.hf_name(name) for name, _ in self.config.parameter_shapes()}
        expected = set(self.names.values())
        # A tied checkpoint may hold lm_head.weight too: the embedding is what the model uses.
        unknown = sorted(n for n in self.store.names() if n not in expected and not n.endswith("rotary_emb.inv_freq")
                         and not (n == "lm_head.weight" and self.config.tied_embeddings))
        if unknown:
            raise ExportError(f"{directory}: tensors a {hf['model_type']} of this config.json does not have: "
                              f"{unknown[:5]}{'...' if len(unknown) > 5 else ''}")
        for name, shape in self.config.parameter_shapes():
            hf_name = self.names[name]
            if hf_name not in self.store:
                raise ExportError(f"{directory}: tensor '{hf_name}' is missing"
                                  + (" (tie_word_embeddings is false)" if name == "lm_head.weight" else ""))
            got = tuple(self.store.shape(hf_name))
            if got != shape:
                raise ExportError(f"{self.store.file_of(hf_name).path}: tensor '{hf_name}' has shape {list(got)}, "
                                  f"config.json implies {list(shape)}")
        self.description = f"hf {os.path.abspath(directory)}"
        self.companions = [os.path.join(directory, n) for n in HF_COMPANIONS
                           if os.path.isfile(os.path.join(directory, n))]
        torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        self.default_dtype = torch_dtype.get(hf.get("torch_dtype"), self.store.dtype("model.embed_tokens.weight"))
        if self.default_dtype not in DTYPE_NAMES:
            self.default_dtype = torch.float32
        # The original config beside lwq's fields (lwq's win where the names meet; they mean the same there), so
        # that the directory still says which family it is.
        self.extra = {k: v for k, v in hf.items() if k not in self.config.to_json()}

    def hf_name(self, name: str) -> str:
        if name == "lm_head.weight" and self.config.tied_embeddings:
            return "model.embed_tokens.weight"
        return name

    def blocks(self, name: str) -> Iterator[torch.Tensor]:
        hf_name = self.names[name]
        for start, stop in row_ranges(self.store.shape(hf_name)):
            yield self.store.read(hf_name, start, stop)


class SyntheticSource(Source):
    def __init__(self, preset: str, seed: int, layers: Optional[int]):
        if preset not in PRESETS:
            raise ExportError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
        cfg = LlamaConfig(**PRESETS[preset].__dict__)
        if layers is not None:
            cfg.n_layers = layers
        self.config = cfg
        self.seed = seed
        self.description = f"synthetic {preset} seed {seed}"
        self.default_dtype = torch.float32
        self.extra = {"seed": seed, "preset": preset}

    def blocks(self, name: str) -> Iterator[torch.Tensor]:
        return synthetic_blocks(self.config, name, self.seed)


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def export(source: Source, out: str, dtype: torch.dtype, shard_size: int = DEFAULT_SHARD_SIZE,
           tokenizer: Optional[str] = None, force: bool = False,
           log: Callable[[str], None] = lambda s: None) -> Dict[str, object]:
    """Writes the model directory `out` from `source` (see the module docstring). Returns a summary dict."""
    start = time.perf_counter()
    cfg = source.config
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    if os.path.exists(out) and not force and (not os.path.isdir(out) or os.listdir(out)):
        raise ExportError(f"{out} exists and is not empty (pass --force to replace it)")
    if tokenizer is not None and not os.path.isfile(tokenizer):
        raise ExportError(f"tokenizer {tokenizer} not found")
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        # The archive: the module tree and code with meta parameters, real rotary buffers.
        if cfg.embed_scale:  # Hugging Face rounds sqrt(dim) to the dtype it computes in: the stored one
            cfg.embed_dtype = str(dtype).replace("torch.", "")
        scripted = torch.jit.script(build_model(cfg, device="meta").eval())
        scripted.save(os.path.join(tmp, "model.pt"))
        del scripted

        plan = cfg.parameter_shapes()
        writer = safetensors.ShardedWriter(tmp, [(name, shape, dtype) for name, shape in plan], shard_size,
                                           metadata={"format": "pt"})

        def converted(name: str) -> Iterator[torch.Tensor]:
            for block in source.blocks(name):
                block = block.to(dtype)
                if not bool(torch.isfinite(block).all()):
                    raise ExportError(f"{source.description}: tensor '{name}' has non-finite values"
                                      + (f" in {DTYPE_NAMES[dtype]}" if dtype != torch.float32 else ""))
                yield block

        try:
            for i, (name, shape) in enumerate(plan):
                writer.write_rows(name, converted(name))
                if name.endswith("mlp.down_proj.weight") or i == len(plan) - 1:
                    log(f"[{i + 1}/{len(plan)}] {name} written, {time.perf_counter() - start:.1f} s")
            files = writer.close()
        except BaseException:
            writer.abort()
            raise

        if tokenizer is not None:
            shutil.copyfile(tokenizer, os.path.join(tmp, "tokenizer.bin"))
        for path in source.companions:
            shutil.copyfile(path, os.path.join(tmp, os.path.basename(path)))
        config = cfg.to_json()
        config.update({
            "dtype": DTYPE_NAMES[dtype],
            "source": source.description,
            "format": "lwq-llama",
            "format_version": FORMAT_VERSION,
            "weights": files[-1] if len(files) > 1 else files[0],
            "n_parameters": cfg.parameter_count(),
        })
        config.update(source.extra)
        if tokenizer is not None:
            config["tokenizer"] = "tokenizer.bin"
        _write_file(os.path.join(tmp, "config.json"), (json.dumps(config, indent=2) + "\n").encode())
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _fsync_dir(tmp)

        if os.path.isdir(out) and os.listdir(out):  # --force: swap, then drop the old directory
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
            os.rename(out, os.path.join(old, "model"))
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if os.path.exists(out) and not os.path.isdir(out):
                os.remove(out)
            os.rename(tmp, out)  # over an empty directory, or to a new name
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    weight_bytes = sum(os.path.getsize(os.path.join(out, f)) for f in files)
    return {"out": out, "files": ["model.pt"] + files + ["config.json"]
            + (["tokenizer.bin"] if tokenizer else []) + [os.path.basename(p) for p in source.companions],
            "model_pt_bytes": os.path.getsize(os.path.join(out, "model.pt")), "weight_bytes": weight_bytes,
            "n_parameters": cfg.parameter_count(), "seconds": time.perf_counter() - start,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


# ----------------------------------------------------------------------------------------------------------------
# Command line


def preset_table() -> str:
    lines = []
    for name, c in PRESETS.items():
        n = c.parameter_count()
        lines.append(f"  {name:<18} dim {c.dim}, hidden {c.hidden_dim}, {c.n_layers} layers, {c.n_heads} heads, "
                     f"{c.n_kv_heads} kv heads, vocab {c.vocab_size}, seq {c.max_seq_len}, "
                     f"{'tied' if c.tied_embeddings else 'untied'} head: {n / 1e6:,.1f} M params, "
                     f"{human_bytes(2 * n)} fp16")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m lwq.export", description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="synthetic presets:\n" + preset_table() + "\n\nexamples:\n"
               "  python3 -m lwq.export --llama2c ../shared/data/stories260K.bin --out /tmp/stories260K\n"
               "  python3 -m lwq.export --hf ~/Llama-3.2-1B --dtype bf16 --max-seq-len 8192 --out /tmp/l1b\n"
               "  python3 -m lwq.export --synthetic llama-2-7b-like --dtype fp16 --out /tmp/7b\n")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--llama2c", metavar="FILE", help="llama2.c legacy checkpoint (.bin; the 'ak42' version 1/2 "
                     "formats are refused)")
    src.add_argument("--hf", metavar="DIR", help="Hugging Face directory (config.json + model.safetensors or "
                     "model.safetensors.index.json and shards) of model_type " + ", ".join(HF_FAMILIES))
    src.add_argument("--synthetic", metavar="PRESET", choices=list(PRESETS),
                     help=f"seeded random weights of a preset shape: {', '.join(PRESETS)}")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist or be empty, "
                   "unless --force)")
    p.add_argument("--dtype", choices=["auto"] + list(DTYPES), default="auto",
                   help="storage dtype of the weights (default auto: llama2c fp32, hf the checkpoint's "
                        "torch_dtype, synthetic fp32); the model always computes in fp32")
    p.add_argument("--shard-size", type=parse_size, default=DEFAULT_SHARD_SIZE, metavar="BYTES",
                   help="largest data size of one safetensors file, e.g. 500MB, 2GiB (default 2GiB); above it "
                        "the weights are sharded with a model.safetensors.index.json")
    p.add_argument("--seed", type=int, default=0, help="--synthetic: random seed (default 0)")
    p.add_argument("--layers", type=int, metavar="N", help="--synthetic: number of layers instead of the preset's")
    p.add_argument("--max-seq-len", type=int, metavar="N", help="positions of the rotary tables (default: the "
                   "source's; Llama 3's 131072 makes a 32 MiB model.pt)")
    p.add_argument("--tokenizer", metavar="FILE", help="a llama2.c tokenizer.bin to copy into DIR as tokenizer.bin")
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.synthetic is None and (args.seed != 0 or args.layers is not None):
        parser.error("--seed and --layers apply to --synthetic only")
    if args.layers is not None and args.layers <= 0:
        parser.error(f"--layers must be positive, got {args.layers}")
    if args.max_seq_len is not None and args.max_seq_len <= 0:
        parser.error(f"--max-seq-len must be positive, got {args.max_seq_len}")
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        if args.llama2c is not None:
            source: Source = Llama2cSource(args.llama2c)
        elif args.hf is not None:
            source = HfSource(args.hf)
        else:
            source = SyntheticSource(args.synthetic, args.seed, args.layers)
        if args.max_seq_len is not None:
            source.config.max_seq_len = args.max_seq_len
        dtype = source.default_dtype if args.dtype == "auto" else DTYPES[args.dtype]
        cfg = source.config
        log(f"exporting {source.description}: dim {cfg.dim}, hidden {cfg.hidden_dim}, {cfg.n_layers} layers, "
            f"{cfg.n_heads}/{cfg.n_kv_heads} heads, vocab {cfg.vocab_size}, {cfg.parameter_count():,} parameters "
            f"as {DTYPE_NAMES[dtype]} to {args.out}")
        summary = export(source, args.out, dtype, args.shard_size, args.tokenizer, args.force, log)
    except ExportError as e:
        print(f"lwq.export: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {summary['out']}: {', '.join(summary['files'])}; model.pt "
          f"{human_bytes(summary['model_pt_bytes'])}, weights {human_bytes(summary['weight_bytes'])} "
          f"({summary['n_parameters']:,} parameters, {DTYPE_NAMES[dtype]}); {summary['seconds']:.1f} s, "
          f"peak RSS {human_bytes(summary['peak_rss_bytes'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
