"""Reading `lwq export --format safetensors` files: plain data (a JSON header and raw little-endian tensors), no
pickle and no TorchScript code, so nothing in the file is executed."""
import json
import pathlib
import struct
from typing import Dict, Tuple

import torch

from ._library import load_library
from .modules import QuantLinear, _set_submodule

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_STATE_VERSION = 1  # of the PackedWeight state this reader builds (docs/packed-format.md)


def read_safetensors(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors, metadata) of a safetensors file. Raises ValueError naming the file and tensor on a malformed file."""
    data = pathlib.Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: {len(data)} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header of {n} bytes runs past the end of the file ({len(data)} bytes)")
    header = json.loads(data[8:8 + n])
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor '{name}' has unknown dtype {info.get('dtype')!r}")
        begin, end = info["data_offsets"]
        shape = list(info["shape"])
        numel = 1
        for d in shape:
            numel *= d
        if begin < 0 or end > len(data) - base or end - begin != numel * torch.empty(0, dtype=dtype).element_size():
            raise ValueError(f"{path}: tensor '{name}': byte range [{begin}, {end}) does not fit shape {shape} "
                             f"of {info['dtype']} in the file")
        raw = bytearray(data[base + begin:base + end])
        tensors[name] = torch.frombuffer(raw, dtype=dtype).reshape(shape) if raw else torch.empty(shape, dtype=dtype)
    return tensors, dict(header.get("__metadata__", {}))


def _packed_from_state(state):
    """A PackedWeight from its serialized state, through the class's own __setstate__ (which validates every field,
    as when an archive is loaded)."""
    w = torch.ops.lwq.quantize_weight(torch.zeros(1, 1), "int8", -1, True)  # a placeholder, replaced below
    w._get_method("__setstate__")(state)
    return w


def load_packed_safetensors(path):
    """(packed, tensors): the PackedWeights of an `lwq export --format safetensors` file by layer name, and every
    other tensor by parameter name."""
    load_library()
    tensors, meta = read_safetensors(path)
    if meta.get("lwq_format") != "packed_weight_state":
        raise ValueError(f"{path} is not an lwq safetensors export (no lwq_format metadata)")
    if meta.get("lwq_state_version") != str(_STATE_VERSION):
        raise ValueError(f"{path} holds packed weight state version {meta.get('lwq_state_version')}; "
                         f"this reader builds version {_STATE_VERSION}")
    packed = {}
    for name, info in json.loads(meta["lwq_layers"]).items():
        key = (name + ".") if name else ""
        try:
            state = (_STATE_VERSION, info["dtype"], info["out_features"], info["in_features"], info["group_size"],
                     info["sym"], tensors.pop(key + "qweight"), tensors.pop(key + "scales"),
                     tensors.pop(key + "zeros", None), tensors.pop(key + "g_idx", None))
        except KeyError as e:
            raise ValueError(f"{path}: layer '{name}' lacks {e}") from None
        try:
            packed[name] = _packed_from_state(state)
        except RuntimeError as e:
            raise ValueError(f"{path}: layer '{name}': {e}") from None
    return packed, tensors


def load_into(module: torch.nn.Module, path) -> torch.nn.Module:
    """Fills an eager model from an `lwq export --format safetensors` file: each quantized layer (a torch.nn.Linear
    of the same name and shape in `module`) becomes a QuantLinear, every other parameter and buffer is loaded.
    Raises ValueError naming what does not match."""
    packed, tensors = load_packed_safetensors(path)
    for name, w in packed.items():
        try:
            linear = module.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}: layer '{name}' is not a module of the model") from None
        if not isinstance(linear, torch.nn.Linear):
            raise ValueError(f"{path}: layer '{name}' is a {type(linear).__name__} in the model, not a Linear")
        if (linear.out_features, linear.in_features) != (w.out_features(), w.in_features()):
            raise ValueError(f"{path}: layer '{name}' is [{w.out_features()}, {w.in_features()}] in the file but "
                             f"[{linear.out_features}, {linear.in_features}] in the model")
        bias = tensors.get(name + ".bias") if linear.bias is not None else None
        _set_submodule(module, name, QuantLinear(w, bias))
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if missing:
        raise ValueError(f"{path} has no tensor for {', '.join(missing)}")
    # The TorchScript archive also saves buffers that the eager module keeps out of its state_dict (persistent=False).
    buffers = {name for name, _ in module.named_buffers()}
    unknown = [name for name in unexpected if name not in buffers]
    if unknown:
        raise ValueError(f"{path} has tensors the model does not have: {', '.join(unknown)}")
    return module
