"""lwq's packed weights as ONNX Runtime nodes (docs/onnx.md): weight-only layers as com.microsoft.MatMulNBits with
the same codes, scales, zero points and act-order indices, static W8A8 layers as QuantizeLinear / DequantizeLinear
around a float MatMul, which ONNX Runtime fuses into its integer kernels.

Each builder returns (nodes, initializers) computing `y` from `x` [..., in_features]; the initializers are named
after the layer (`<name>.qweight`, `.scales`, `.zero_points`, `.g_idx`, `.bias`, `.input_scale`) and the
intermediate values `<name>/...`, so several layers can share one graph. What ONNX Runtime can run was measured on
ONNX Runtime 1.23.2 (CPU, float32 activations); matmul_nbits_reason says so up front for a format it cannot.
"""
from typing import List, Optional, Tuple

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"
_INT_BITS = {"int8": 8, "int4": 4, "int4_fullrange": 4, "int3": 3, "int2": 2}
_ACT_ZERO_POINT_DTYPES = {"uint8": np.uint8, "int8": np.int8}
_MIN_BLOCK = 16  # MatMulNBits' smallest block_size


def _block_size(group_size: int, in_features: int) -> int:
    """MatMulNBits' block_size for an lwq group size: the group size itself, or for one group per output channel
    the next power of two >= in_features (the ragged last block covers the rest)."""
    if group_size != -1:
        return group_size
    return max(_MIN_BLOCK, 1 << (in_features - 1).bit_length())


def matmul_nbits_reason(dtype: str, group_size: int, sym: bool, has_g_idx: bool,
                        in_features: int) -> Optional[str]:
    """None when ONNX Runtime's MatMulNBits computes this lwq format exactly, else why not (one line), so that an
    export can refuse before it writes anything."""
    if dtype not in _INT_BITS:
        return f"{dtype} codes index a value table, MatMulNBits holds integer codes with a zero point"
    bits = _INT_BITS[dtype]
    if bits not in (4, 8):
        return f"{dtype}: ONNX Runtime's MatMulNBits runs 4 and 8 bits only"
    if group_size != -1 and (group_size < _MIN_BLOCK or group_size & (group_size - 1)):
        return (f"group size {group_size}: MatMulNBits' block_size must be a power of two >= {_MIN_BLOCK} "
                "(per-channel, -1, is fine)")
    if bits == 8 and has_g_idx:
        return "8 bits with act-order (g_idx): ONNX Runtime's 8-bit MatMulNBits has no g_idx"
    if in_features <= 0:
        return f"in_features {in_features} must be positive"
    return None


def _pack_low_first(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes [rows, L] (each < 2^bits) as bytes [rows, ceil(L * bits / 8)], the first code in the lowest bits."""
    if bits == 8:
        return codes.astype(np.uint8)
    per_byte = 8 // bits
    rows, length = codes.shape
    padded = np.zeros((rows, -(-length // per_byte) * per_byte), np.uint8)
    padded[:, :length] = codes
    fields = padded.reshape(rows, -1, per_byte).astype(np.uint16) << (bits * np.arange(per_byte, dtype=np.uint16))
    return fields.sum(axis=-1).astype(np.uint8)


def _scaled_input(name: str, x: str, input_scale: Optional[np.ndarray]) -> Tuple[str, List[onnx.NodeProto],
                                                                               List[onnx.TensorProto]]:
    """x, or x * input_scale (the layer computes (x * input_scale) @ W.T)."""
    if input_scale is None:
        return x, [], []
    scaled = f"{name}/scaled_input"
    scale = numpy_helper.from_array(np.asarray(input_scale, np.float32).reshape(-1), f"{name}.input_scale")
    return scaled, [helper.make_node("Mul", [x, scale.name], [scaled], name=f"{name}/input_scale")], [scale]


def _with_bias(name: str, product: str, y: str, bias: Optional[np.ndarray]) -> Tuple[List[onnx.NodeProto],
                                                                                   List[onnx.TensorProto]]:
    """The Add of the bias to `product`, writing y (or nothing: then product must be y)."""
    if bias is None:
        return [], []
    b = numpy_helper.from_array(np.asarray(bias, np.float32).reshape(-1), f"{name}.bias")
    return [helper.make_node("Add", [product, b.name], [y], name=f"{name}/bias")], [b]


def matmul_nbits(name: str, x: str, y: str, packed, bias: Optional[np.ndarray] = None, accuracy_level: int = 0,
                 input_scale: Optional[np.ndarray] = None) -> Tuple[List[onnx.NodeProto], List[onnx.TensorProto]]:
    """y = (x [* input_scale]) @ W.T (+ bias) with W the lwq PackedWeight `packed`, as one MatMulNBits node.

    The same values: codes c (lwq's signed sym codes q become q + 2^(bits-1), ONNX Runtime's default zero point, so
    sym layers need no zero points), float32 scales [N * k_blocks], zero points uint8 packed per row (asym without
    g_idx) or float (asym with g_idx: ONNX Runtime 1.23.2 computes packed zero points wrongly there), and g_idx int32
    [K] in the original column order. accuracy_level 4 is ONNX Runtime's int8-activation path (lwq's
    `compute int8`; not exact). Raises ValueError (naming the layer) for a format matmul_nbits_reason refuses."""
    dtype, group_size, sym = packed.dtype(), packed.group_size(), packed.sym()
    n, k = packed.out_features(), packed.in_features()
    q, scales, zeros, g_idx = torch.ops.lwq.unpack_weight(packed)
    reason = matmul_nbits_reason(dtype, group_size, sym, g_idx is not None, k)
    if reason is not None:
        raise ValueError(f"layer '{name}' ({packed.describe()}): {reason}")
    bits = _INT_BITS[dtype]
    block = _block_size(group_size, k)
    k_blocks = -(-k // block)
    codes = (q + (1 << (bits - 1)) if zeros is None else q).numpy()
    blocks = np.zeros((n, k_blocks * block), np.uint8)
    blocks[:, :k] = codes
    qweight = _pack_low_first(blocks, bits).reshape(n, k_blocks, block * bits // 8)
    if scales.shape[1] != k_blocks:  # an lwq group size above K is one group, as the one ragged block
        raise ValueError(f"layer '{name}': {scales.shape[1]} groups, MatMulNBits with block_size {block} has "
                         f"{k_blocks} blocks")

    inits = [numpy_helper.from_array(qweight, f"{name}.qweight"),
             numpy_helper.from_array(scales.numpy().astype(np.float32).reshape(-1), f"{name}.scales")]
    inputs = [inits[0].name, inits[1].name]
    if zeros is not None:
        z = zeros.numpy()
        zp = z.astype(np.float32).reshape(-1) if g_idx is not None else _pack_low_first(z, bits).reshape(-1)
        inits.append(numpy_helper.from_array(zp, f"{name}.zero_points"))
    inputs.append(inits[-1].name if zeros is not None else "")
    if g_idx is not None:
        inits.append(numpy_helper.from_array(g_idx.numpy().astype(np.int32), f"{name}.g_idx"))
        inputs.append(inits[-1].name)
    while inputs[-1] == "":
        inputs.pop()

    a, nodes, scale_inits = _scaled_input(name, x, input_scale)
    product = f"{name}/matmul" if bias is not None else y
    nodes.append(helper.make_node("MatMulNBits", [a] + inputs, [product], name=f"{name}/MatMulNBits",
                                  domain=MS_DOMAIN, K=k, N=n, bits=bits, block_size=block,
                                  accuracy_level=accuracy_level))
    bias_nodes, bias_inits = _with_bias(name, product, y, bias)
    return nodes + bias_nodes, scale_inits + inits + bias_inits


def qdq_linear(name: str, x: str, y: str, packed, act_scale: float, act_zero_point: int, act_dtype: str,
               bias: Optional[np.ndarray] = None, input_scale: Optional[np.ndarray] = None
               ) -> Tuple[List[onnx.NodeProto], List[onnx.TensorProto]]:
    """Static W8A8 (lwq::w8a8_linear): x [* input_scale] quantized per tensor with the calibrated (act_scale,
    act_zero_point) to act_dtype (uint8 or int8) and dequantized again, the int8 weight [K, N] dequantized per output
    channel (axis 1), a float MatMul and the bias: the QDQ form that ONNX Runtime runs as an integer GEMM. Raises
    ValueError (naming the layer) unless the weight is int8, sym, per output channel."""
    if packed.dtype() != "int8" or not packed.sym() or packed.group_size() != -1:
        raise ValueError(f"layer '{name}': W8A8 weights are int8, symmetric, per output channel; got "
                         f"{packed.describe()}")
    if act_dtype not in _ACT_ZERO_POINT_DTYPES:
        raise ValueError(f"layer '{name}': activation dtype must be uint8 or int8, got {act_dtype!r}")
    info = np.iinfo(_ACT_ZERO_POINT_DTYPES[act_dtype])
    if not (np.isfinite(act_scale) and act_scale > 0) or not info.min <= act_zero_point <= info.max:
        raise ValueError(f"layer '{name}': activation scale {act_scale} must be positive and finite and the zero "
                         f"point {act_zero_point} within {act_dtype}")
    q, scales, _, _ = torch.ops.lwq.unpack_weight(packed)
    inits = [numpy_helper.from_array(np.array(act_scale, np.float32), f"{name}.act_scale"),
             numpy_helper.from_array(np.array(act_zero_point, _ACT_ZERO_POINT_DTYPES[act_dtype]),
                                     f"{name}.act_zero_point"),
             numpy_helper.from_array(np.ascontiguousarray(q.numpy().astype(np.int8).T), f"{name}.qweight"),
             numpy_helper.from_array(scales.numpy().astype(np.float32).reshape(-1), f"{name}.scales"),
             numpy_helper.from_array(np.zeros(packed.out_features(), np.int8), f"{name}.zero_points")]
    act_s, act_zp, qweight, w_scales, w_zp = (t.name for t in inits)
    a, nodes, scale_inits = _scaled_input(name, x, input_scale)
    product = f"{name}/matmul" if bias is not None else y
    nodes += [
        helper.make_node("QuantizeLinear", [a, act_s, act_zp], [f"{name}/x_q"], name=f"{name}/QuantizeLinear"),
        helper.make_node("DequantizeLinear", [f"{name}/x_q", act_s, act_zp], [f"{name}/x_dq"],
                         name=f"{name}/DequantizeLinear"),
        helper.make_node("DequantizeLinear", [qweight, w_scales, w_zp], [f"{name}/w_dq"], axis=1,
                         name=f"{name}/DequantizeLinear_weight"),
        helper.make_node("MatMul", [f"{name}/x_dq", f"{name}/w_dq"], [product], name=f"{name}/MatMul"),
    ]
    bias_nodes, bias_inits = _with_bias(name, product, y, bias)
    return nodes + bias_nodes, scale_inits + inits + bias_inits
