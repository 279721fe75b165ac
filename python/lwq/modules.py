"""Quantized linear layers for eager PyTorch and TorchScript, and loading quantized TorchScript archives."""
import re
from typing import Iterable, List, Optional

import torch

from ._library import load_library

# Module names left float by default, as `lwq quantize` does (the output head).
DEFAULT_EXCLUDE = (r"(^|\.)(lm_head|output)$",)
_INT_BITS = {"int8": 8, "int4": 4, "int4_fullrange": 4, "int3": 3, "int2": 2}


def load(path, map_location=None) -> torch.jit.ScriptModule:
    """torch.jit.load of a quantized archive, after loading liblwq_ops.so. An archive is code: load only archives you
    trust (lwq.load_into reads the data-only safetensors export instead)."""
    load_library()
    return torch.jit.load(str(path), map_location=map_location)


_A8_DTYPES = ("int8", "int4", "int4_fullrange")


def _check_compute(compute: str, dtype: str) -> None:
    if compute not in ("fp32", "int8"):
        raise ValueError(f"compute must be 'fp32' or 'int8', got {compute!r}")
    if compute == "int8" and dtype not in _A8_DTYPES:
        raise ValueError(f"compute='int8' (torch.ops.lwq.woq_linear_a8) needs dtype {', '.join(_A8_DTYPES)}, "
                         f"got {dtype}")


class _PackedLinear(torch.nn.Module):
    """What every lwq linear holds: the packed weight, its shape, an optional bias and an optional input scale
    (x * input_scale before the product: per-input-channel AWQ, TEQ or SmoothQuant scales that were not folded into
    the layer that produces x)."""

    def __init__(self, packed, bias: Optional[torch.Tensor], input_scale: Optional[torch.Tensor]):
        super().__init__()
        self.in_features = packed.in_features()
        self.out_features = packed.out_features()
        self.packed = packed
        if bias is not None and bias.shape != (self.out_features,):
            raise ValueError(f"bias has shape {tuple(bias.shape)}, expected ({self.out_features},)")
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        if input_scale is not None:
            if input_scale.shape != (self.in_features,):
                raise ValueError(f"input_scale has shape {tuple(input_scale.shape)}, expected ({self.in_features},)")
            if not torch.isfinite(input_scale).all():
                raise ValueError("input_scale holds NaN or Inf")
            input_scale = input_scale.detach().float().clone()
        self.input_scale = input_scale

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:  # None: TorchScript compiles the multiply away
            x = x * self.input_scale
        return x

    def _scale_repr(self) -> str:
        return ", input_scale" if self.input_scale is not None else ""


class QuantLinear(_PackedLinear):
    """y = x @ W.T + bias with W held as an lwq PackedWeight. compute="fp32" calls torch.ops.lwq.woq_linear (exact);
    compute="int8" calls torch.ops.lwq.woq_linear_a8, which rounds x to int8 per 32 columns (faster at batch 1:
    about 2x on AVX2-only CPUs, less where AVX-512 already speeds up the exact path; int8/int4/int4_fullrange
    weights). Scriptable: the packed weight is saved inside the TorchScript archive, which loads wherever
    liblwq_ops.so is loaded."""

    def __init__(self, packed, bias: Optional[torch.Tensor] = None, compute: str = "fp32",
                 input_scale: Optional[torch.Tensor] = None):
        _check_compute(compute, packed.dtype())
        super().__init__(packed, bias, input_scale)
        self.int8_activations = compute == "int8"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._scaled(x)
        if self.int8_activations:
            return torch.ops.lwq.woq_linear_a8(x, self.packed, self.bias)
        return torch.ops.lwq.woq_linear(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        return self.packed.describe() + (", compute=int8" if self.int8_activations else "") + self._scale_repr()


class W8A8Linear(_PackedLinear):
    """Static W8A8: y = x @ W.T + bias through torch.ops.lwq.w8a8_linear, x quantized per tensor with a calibrated
    scale and zero point (act_dtype "uint8" or "int8"), W int8 symmetric per output channel. input_scale, when
    given, multiplies x first (SmoothQuant scales that were not folded into the producer of x)."""

    def __init__(self, packed, act_scale: float, act_zero_point: int, act_dtype: str = "uint8",
                 bias: Optional[torch.Tensor] = None, input_scale: Optional[torch.Tensor] = None):
        if packed.dtype() != "int8" or not packed.sym() or packed.group_size() != -1:
            raise ValueError(f"W8A8 weights are int8, symmetric, per output channel; got {packed.describe()}")
        if act_dtype not in ("uint8", "int8"):
            raise ValueError(f"act_dtype must be 'uint8' or 'int8', got {act_dtype!r}")
        super().__init__(packed, bias, input_scale)
        self.act_scale = float(act_scale)
        self.act_zero_point = int(act_zero_point)
        self.act_dtype = act_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.lwq.w8a8_linear(self._scaled(x), self.packed, self.act_scale, self.act_zero_point, self.bias,
                                         self.act_dtype)

    def extra_repr(self) -> str:
        return (f"{self.packed.describe()}, act {self.act_dtype} scale={self.act_scale:g} "
                f"zero_point={self.act_zero_point}" + self._scale_repr())


def _with_fp16_scales(weight: torch.Tensor, packed):
    """The same quantization with every scale rounded to float16 and the codes chosen again for those scales (the
    round-to-nearest rule of docs/packed-format.md), so the weight exports to GPTQ exactly."""
    dtype = packed.dtype()
    if dtype not in _INT_BITS:
        raise ValueError(f"fp16_scales applies to the integer dtypes ({', '.join(_INT_BITS)}), not {dtype}")
    bits = _INT_BITS[dtype]
    _, scales, zeros, _ = torch.ops.lwq.unpack_weight(packed)
    s16 = scales.half().float()
    if not torch.isfinite(s16).all() or ((s16 == 0) & (scales != 0)).any():
        raise ValueError("a scale is outside the float16 range")
    k = weight.shape[1]
    size = k if packed.group_size() == -1 else packed.group_size()
    cols = torch.arange(k) // size
    s = s16[:, cols]
    if zeros is None:  # sym: signed codes
        q = torch.clamp(torch.round(weight / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    else:
        q = torch.clamp(torch.round(weight / s) + zeros[:, cols], 0, 2 ** bits - 1)
    return torch.ops.lwq.pack_weight(q.to(torch.int32), s16, zeros, dtype, packed.group_size(), None)


def quantize_linear(linear: torch.nn.Linear, dtype: str = "int4", group_size: int = 128, sym: bool = True,
                    fp16_scales: bool = False, compute: str = "fp32") -> QuantLinear:
    """A QuantLinear holding the round-to-nearest quantization of linear.weight (torch.ops.lwq.quantize_weight).
    fp16_scales: float16-exact scales (integer dtypes), for an exact GPTQ export (`lwq export --format gptq`).
    compute: "fp32" (exact) or "int8" (int8 activations, see QuantLinear)."""
    _check_compute(compute, dtype)
    load_library()
    weight = linear.weight.detach().float().contiguous()
    packed = torch.ops.lwq.quantize_weight(weight, dtype, group_size, sym)
    if fp16_scales:
        packed = _with_fp16_scales(weight, packed)
    return QuantLinear(packed, linear.bias, compute)


def _set_submodule(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def quantize_(module: torch.nn.Module, dtype: str = "int4", group_size: int = 128, sym: bool = True,
              exclude: Iterable[str] = DEFAULT_EXCLUDE, fp16_scales: bool = False, compute: str = "fp32") -> List[str]:
    """Replaces every torch.nn.Linear of `module` (in place) by a QuantLinear, except those whose qualified name
    matches a regex of `exclude` (searched, as `lwq quantize --exclude` does). Returns the names replaced.
    compute: "fp32" (exact) or "int8" (int8 activations, see QuantLinear).
    A TorchScript module is refused: its linears are not torch.nn.Linear objects (they would silently be skipped);
    quantize the eager model, or the archive with `lwq quantize`."""
    _check_compute(compute, dtype)
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError("lwq.quantize_ works on eager torch.nn.Module models; this is a TorchScript "
                        f"{type(module).__name__}: quantize the eager model, or the archive with `lwq quantize`")
    patterns = [re.compile(p) for p in exclude]
    names = [name for name, m in module.named_modules()
             if type(m) is torch.nn.Linear and name and not any(p.search(name) for p in patterns)]
    for name in names:
        _set_submodule(module, name,
                       quantize_linear(module.get_submodule(name), dtype, group_size, sym, fp16_scales, compute))
    return names
