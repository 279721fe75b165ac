"""Reading `lwq export --format safetensors` files: plain data (a JSON header and raw little-endian tensors), no
pickle and no TorchScript code, so nothing in the file is executed."""
import json

import torch

from ._library import load_library
from .modules import QuantLinear, W8A8Linear, _set_submodule
from .safetensors import read_safetensors

_STATE_VERSION = 1  # of the PackedWeight state this reader builds (docs/packed-format.md)


def _packed_from_state(state):
    """A PackedWeight from its serialized state, through the class's own __setstate__ (which validates every field,
    as when an archive is loaded)."""
    w = torch.ops.lwq.quantize_weight(torch.zeros(1, 1), "int8", -1, True)  # a placeholder, replaced below
    w._get_method("__setstate__")(state)
    return w


def _read_export(path):
    """(layers, tensors): per quantized layer (packed weight, its metadata, its input scale or None), and every
    other tensor by parameter name."""
    load_library()
    tensors, meta = read_safetensors(path)
    if meta.get("lwq_format") != "packed_weight_state":
        raise ValueError(f"{path} is not an lwq safetensors export (no lwq_format metadata)")
    if meta.get("lwq_state_version") != str(_STATE_VERSION):
        raise ValueError(f"{path} holds packed weight state version {meta.get('lwq_state_version')}; "
                         f"this reader builds version {_STATE_VERSION}")
    layers = {}
    for name, info in json.loads(meta["lwq_layers"]).items():
        key = (name + ".") if name else ""
        try:
            state = (_STATE_VERSION, info["dtype"], info["out_features"], info["in_features"], info["group_size"],
                     info["sym"], tensors.pop(key + "qweight"), tensors.pop(key + "scales"),
                     tensors.pop(key + "zeros", None), tensors.pop(key + "g_idx", None))
            input_scale = tensors.pop(key + "input_scale") if info.get("input_scale", False) else None
        except KeyError as e:
            raise ValueError(f"{path}: layer '{name}' lacks {e}") from None
        if key + "input_scale" in tensors:
            raise ValueError(f"{path}: the file has '{key}input_scale' but layer '{name}' has no input_scale in its "
                             "metadata (an edited file?)")
        try:
            layers[name] = (_packed_from_state(state), info, input_scale)
        except RuntimeError as e:
            raise ValueError(f"{path}: layer '{name}': {e}") from None
    return layers, tensors


def load_packed_safetensors(path):
    """(packed, tensors): the PackedWeights of an `lwq export --format safetensors` file by layer name, and every
    other tensor by parameter name. Weights only: load_quantized_modules gives the whole layers (input scales, int8
    or W8A8 activations)."""
    layers, tensors = _read_export(path)
    return {name: packed for name, (packed, _, _) in layers.items()}, tensors


def load_quantized_modules(path):
    """(modules, tensors): each quantized layer of an `lwq export --format safetensors` file as the module that
    computes it (QuantLinear, or W8A8Linear for static W8A8 layers) with its bias, input scale and activation
    parameters, by layer name; and every other tensor by parameter name."""
    layers, tensors = _read_export(path)
    modules = {}
    for name, (packed, info, input_scale) in layers.items():
        bias = tensors.get(((name + ".") if name else "") + "bias")
        try:
            if "activation" in info:
                act = info["activation"]
                modules[name] = W8A8Linear(packed, act["scale"], act["zero_point"], act["dtype"], bias, input_scale)
            else:
                modules[name] = QuantLinear(packed, bias, info.get("compute", "fp32"), input_scale)
        except (KeyError, ValueError, RuntimeError) as e:
            raise ValueError(f"{path}: layer '{name}': {e}") from None
    return modules, tensors


def load_into(module: torch.nn.Module, path) -> torch.nn.Module:
    """Fills an eager model from an `lwq export --format safetensors` file: each quantized layer (a torch.nn.Linear
    of the same name and shape in `module`) becomes a QuantLinear (or a W8A8Linear), every other parameter and
    buffer is loaded. Raises ValueError naming what does not match."""
    modules, tensors = load_quantized_modules(path)
    for name, q in modules.items():
        try:
            linear = module.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}: layer '{name}' is not a module of the model") from None
        if not isinstance(linear, torch.nn.Linear):
            raise ValueError(f"{path}: layer '{name}' is a {type(linear).__name__} in the model, not a Linear")
        if (linear.out_features, linear.in_features) != (q.out_features, q.in_features):
            raise ValueError(f"{path}: layer '{name}' is [{q.out_features}, {q.in_features}] in the file but "
                             f"[{linear.out_features}, {linear.in_features}] in the model")
        if (linear.bias is None) != (q.bias is None):
            raise ValueError(f"{path}: layer '{name}' {'has' if q.bias is not None else 'has no'} bias in the file "
                             f"but {'has' if linear.bias is not None else 'has no'} bias in the model")
        _set_submodule(module, name, q)
    # load_state_dict copies into the existing tensors, and a copy into a meta (empty) tensor does nothing: those are
    # replaced by the file's tensors instead.
    owners = dict(module.named_modules())
    for name, current in [*module.named_parameters(), *module.named_buffers()]:
        if current.is_meta and name in tensors:
            owner_name, _, attr = name.rpartition(".")
            owner, value = owners[owner_name], tensors[name].to(current.dtype)
            if attr in owner._parameters:
                owner._parameters[attr] = torch.nn.Parameter(value, requires_grad=current.requires_grad)
            else:
                owner._buffers[attr] = value
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if missing:
        raise ValueError(f"{path} has no tensor for {', '.join(missing)}")
    # The TorchScript archive also saves buffers that the eager module keeps out of its state_dict (persistent=False).
    buffers = {name for name, _ in module.named_buffers()}
    unknown = [name for name in unexpected if name not in buffers]
    if unknown:
        raise ValueError(f"{path} has tensors the model does not have: {', '.join(unknown)}")
    empty = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if empty:
        raise ValueError(f"{path} has no tensor for {', '.join(empty)}, which the model holds empty (meta)")
    return module
