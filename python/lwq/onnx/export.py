"""lwq models out (docs/onnx.md): an lwq model as ONNX + one external data file that runs in ONNX Runtime.

    python -m lwq.onnx.export --float MODEL_DIR OUT.onnx                      # the float model of an exported dir
    python -m lwq.onnx.export DATA.safetensors OUT.onnx --config CONFIG.json  # a quantized model's data export

The graph is lwq.llama's model traced by torch.onnx.export with every Linear replaced by a placeholder node and
every parameter left out (export_params=False): the trace never holds a weight. The placeholders then become the
layers' nodes (lwq.onnx.nodes: MatMulNBits, QDQ, or a float MatMul) and the parameters initializers, each tensor
appended to OUT.data as it is made, so the float weights are never all in memory at once. Both files are written
under temporary names in OUT's directory and renamed into place at the end (OUT.data first, then OUT): a failed
export leaves no OUT.
"""
import argparse
import io
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from .. import load_quantized_modules
from ..export import _fsync_dir
from ..llama import LlamaConfig, build_model
from ..modules import W8A8Linear
from ..safetensors import WeightStore
from . import nodes

DEFAULT_OPSET = 17
_PLACEHOLDER_DOMAIN = "lwq_onnx"
_ALIGN = 64  # bytes: each tensor's offset in OUT.data

# (nodes, initializers) computing output `y` from input `x` for the linear layer `name`.
LayerBuilder = Callable[[str, str, str], Tuple[List[onnx.NodeProto], List[onnx.TensorProto]]]


class ExportError(Exception):
    """A problem with the user's input or output path (printed without a traceback)."""


@dataclass
class Report:
    """What export_quantized wrote: per quantized layer the nodes it became."""
    out: str
    data: str
    layers: Dict[str, str]
    initializers: int
    data_bytes: int
    seconds: float
    peak_rss_bytes: int


# ----------------------------------------------------------------------------------------------------------------
# The graph without weights


class _LinearPlaceholder(torch.autograd.Function):
    """A linear layer that the trace records as one node naming the layer, replaced after the export. Its forward
    gives zeros of the right shape: the trace needs shapes, not values."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: str, out_features: int) -> torch.Tensor:  # type: ignore[override]
        return x.new_zeros(x.shape[:-1] + (out_features,))

    @staticmethod
    def symbolic(g, x, layer: str, out_features: int):
        y = g.op(f"{_PLACEHOLDER_DOMAIN}::Linear", x, layer_s=layer)
        sizes = x.type().varyingSizes()  # None where the trace's dimension is dynamic
        y.setType(x.type().with_sizes(sizes[:-1] + [out_features]))
        return y


class _LinearSlot(torch.nn.Module):
    def __init__(self, name: str, out_features: int):
        super().__init__()
        self.layer = name
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LinearPlaceholder.apply(x, self.layer, self.out_features)


@dataclass
class _Skeleton:
    graph: onnx.GraphProto
    linears: Dict[str, torch.nn.Linear]            # by qualified name, meta parameters
    parameters: Dict[str, Tuple[int, ...]]         # every other parameter: the initializers to write


def _skeleton(cfg: LlamaConfig, buffers: Dict[str, torch.Tensor], opset: int, what: str) -> _Skeleton:
    """The traced graph of cfg's model: input_ids int64 [batch, seq] -> logits [batch, seq, vocab], each Linear a
    placeholder node, each other parameter a graph input of its qualified name. `buffers` replaces the model's
    own buffers of those names (the rotary tables the quantized model was saved with)."""
    model = build_model(cfg, device="meta").eval()
    owners = dict(model.named_modules())
    linears = {name: m for name, m in owners.items() if isinstance(m, torch.nn.Linear)}
    for name, linear in linears.items():
        parent, _, child = name.rpartition(".")
        setattr(owners[parent], child, _LinearSlot(name, linear.out_features))
    parameters = {}
    for i, (name, p) in enumerate(list(model.named_parameters())):
        # A zero-stride tensor of its own value: no memory, and torch.onnx's deduplication of equal parameters
        # keeps every name.
        owner, _, attr = name.rpartition(".")
        owners[owner]._parameters[attr] = torch.nn.Parameter(torch.full((), i + 1.0).expand(p.shape),
                                                             requires_grad=False)
        parameters[name] = tuple(p.shape)
    for name, current in model.named_buffers():
        if name in buffers:
            if tuple(buffers[name].shape) != tuple(current.shape):
                raise ExportError(f"{what}: buffer '{name}' has shape {list(buffers[name].shape)}, the model of "
                                  f"the config {list(current.shape)}")
            owner, _, attr = name.rpartition(".")
            owners[owner]._buffers[attr] = buffers[name].to(current.dtype)
    traced = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.onnx's notes on the placeholder's unknown shape function
        torch.onnx.export(model, (torch.ones(1, 2, dtype=torch.long),), traced, input_names=["input_ids"],
                          output_names=["logits"], opset_version=opset, export_params=False,
                          do_constant_folding=False, custom_opsets={_PLACEHOLDER_DOMAIN: 1},
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}})
    graph = onnx.load_from_string(traced.getvalue()).graph
    inputs = {i.name for i in graph.input} - {"input_ids"}
    if inputs != set(parameters):
        raise RuntimeError(f"the traced graph's inputs are not the model's parameters: {sorted(inputs ^ set(parameters))}")
    return _Skeleton(graph, linears, parameters)


def _float_linear(name: str, x: str, y: str, weight: np.ndarray, bias: Optional[np.ndarray]
                  ) -> Tuple[List[onnx.NodeProto], List[onnx.TensorProto]]:
    """y = x @ weight.T (+ bias) with the float weight [N, K] under its parameter name (ONNX Runtime folds the
    Transpose when it loads the model)."""
    inits = [numpy_helper.from_array(weight, f"{name}.weight")]
    product = f"{name}/matmul" if bias is not None else y
    out = [helper.make_node("Transpose", [inits[0].name], [f"{name}/weight_t"], perm=[1, 0], name=f"{name}/Transpose"),
           helper.make_node("MatMul", [x, f"{name}/weight_t"], [product], name=f"{name}/MatMul")]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, f"{name}.bias"))
        out.append(helper.make_node("Add", [product, inits[1].name], [y], name=f"{name}/bias"))
    return out, inits


def _as_float32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


# ----------------------------------------------------------------------------------------------------------------
# Writing


class _ExternalData:
    """Appends initializers' bytes to one open file and points each at it: `location` relative to the model."""

    def __init__(self, f: BinaryIO, location: str):
        self.f = f
        self.location = location
        self.size = 0

    def add(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        if not tensor.HasField("raw_data"):  # numpy_helper stores every numeric dtype as raw_data
            raise RuntimeError(f"initializer '{tensor.name}' has no raw data")
        offset = -(-self.size // _ALIGN) * _ALIGN
        self.f.write(b"\0" * (offset - self.size))
        self.f.write(tensor.raw_data)
        self.size = offset + len(tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(offset)),
                           ("length", str(self.size - offset))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        return tensor


def _output_paths(out: str, inputs: Sequence[str]) -> Tuple[str, str]:
    """(OUT, OUT.data) as absolute paths, refused when either is an input file or OUT is a directory."""
    out = os.path.abspath(out)
    data = out + ".data"
    if os.path.isdir(out):
        raise ExportError(f"{out} is a directory; give the .onnx file to write")
    if not os.path.isdir(os.path.dirname(out)):
        raise ExportError(f"{os.path.dirname(out)}: the output's directory does not exist")
    for target in (out, data):
        for source in inputs:
            if os.path.exists(target) and os.path.exists(source) and os.path.samefile(target, source):
                raise ExportError(f"{target} is the input {source}: refusing to overwrite it")
    return out, data


def _write(skeleton: _Skeleton, cfg: LlamaConfig, out: str, data: str, build_layer: Callable[[str], LayerBuilder],
           parameter: Callable[[str], torch.Tensor], opset: int) -> Tuple[int, int]:
    """Writes OUT.data and OUT (temporaries, then renamed) from the skeleton: each placeholder's nodes from
    build_layer(name), each parameter from parameter(name). Returns (initializers, data bytes)."""
    parent = os.path.dirname(out)
    fd_data, tmp_data = tempfile.mkstemp(prefix=f".{os.path.basename(data)}.tmp-", dir=parent)
    fd_onnx, tmp_onnx = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        with os.fdopen(fd_data, "wb") as f_data, os.fdopen(fd_onnx, "wb") as f_onnx:
            external = _ExternalData(f_data, os.path.basename(data))
            graph_nodes: List[onnx.NodeProto] = []
            inits = [external.add(numpy_helper.from_array(_as_float32(parameter(name)), name))
                     for name in skeleton.parameters]
            for node in skeleton.graph.node:
                if node.domain != _PLACEHOLDER_DOMAIN:
                    graph_nodes.append(node)
                    continue
                layer = helper.get_attribute_value(node.attribute[0]).decode()
                made, tensors = build_layer(layer)(layer, node.input[0], node.output[0])
                graph_nodes += made
                inits += [external.add(t) for t in tensors]
            logits = helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", "seq", cfg.vocab_size])
            graph = helper.make_graph(graph_nodes, "lwq", [skeleton.graph.input[0]], [logits], inits)
            opsets = [helper.make_opsetid("", opset)]
            if any(n.domain == nodes.MS_DOMAIN for n in graph_nodes):
                opsets.append(helper.make_opsetid(nodes.MS_DOMAIN, 1))
            model = helper.make_model(graph, opset_imports=opsets, producer_name="lwq")
            f_onnx.write(model.SerializeToString())
            for f in (f_data, f_onnx):
                f.flush()
                os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide the model from other users
                os.fsync(f.fileno())
        os.replace(tmp_data, data)
        os.replace(tmp_onnx, out)
        _fsync_dir(parent)
    except BaseException:
        for tmp in (tmp_data, tmp_onnx):
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    return len(inits), external.size


def _read_config(path: str) -> LlamaConfig:
    """The model of an lwq config.json; ExportError naming the file when it is missing or not one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ExportError(f"config {path} not found") from None
    except (OSError, ValueError) as e:
        raise ExportError(f"config {path} is not readable JSON: {e}") from None
    if not isinstance(data, dict) or data.get("architecture") != "llama":
        raise ExportError(f"config {path} is not an lwq model config (no \"architecture\": \"llama\")")
    try:
        cfg = LlamaConfig.from_json(data)
        cfg.validate(path)
    except (TypeError, ValueError) as e:
        raise ExportError(f"config {path}: {e}") from None
    return cfg


def _check_shape(what: str, name: str, got: Sequence[int], expected: Sequence[int]) -> None:
    if tuple(got) != tuple(expected):
        raise ExportError(f"{what}: tensor '{name}' has shape {list(got)}, the model of the config {list(expected)}")


# ----------------------------------------------------------------------------------------------------------------
# The two exports


def export_float(model_dir: str, out: str, opset: int = DEFAULT_OPSET) -> None:
    """The float model of an lwq model directory (`python3 -m lwq.export`: config.json + model.safetensors or shards)
    as OUT + OUT.data: input_ids int64 [batch, seq] -> logits float32 [batch, seq, vocab], the weights float32
    under their parameter names, read one tensor at a time."""
    config = os.path.join(model_dir, "config.json")
    cfg = _read_config(config)
    try:
        store = WeightStore(model_dir)
    except (OSError, ValueError) as e:
        raise ExportError(f"{model_dir}: {e}") from None
    inputs = [os.path.join(model_dir, n) for n in os.listdir(model_dir)]
    out, data = _output_paths(out, inputs)
    skeleton = _skeleton(cfg, {}, opset, model_dir)
    wanted = dict(skeleton.parameters)
    for name, linear in skeleton.linears.items():
        wanted[f"{name}.weight"] = tuple(linear.weight.shape)
        if linear.bias is not None:
            wanted[f"{name}.bias"] = tuple(linear.bias.shape)
    for name, shape in wanted.items():
        if name not in store:
            raise ExportError(f"{store.path}: no tensor '{name}', which the model of {config} has")
        _check_shape(store.path, name, store.shape(name), shape)

    def build_layer(name: str) -> LayerBuilder:
        bias = skeleton.linears[name].bias is not None
        return lambda layer, x, y: _float_linear(layer, x, y, _as_float32(store.read(f"{layer}.weight")),
                                                 _as_float32(store.read(f"{layer}.bias")) if bias else None)

    _write(skeleton, cfg, out, data, build_layer, store.read, opset)


def _quantized_builder(module, info: Dict[str, str]) -> LayerBuilder:
    """The nodes of one lwq quantized layer (a QuantLinear or W8A8Linear); records what it became in `info`."""
    bias = None if module.bias is None else _as_float32(module.bias)
    scale = None if module.input_scale is None else _as_float32(module.input_scale)
    packed = module.packed
    if isinstance(module, W8A8Linear):
        def build(name: str, x: str, y: str):
            info[name] = f"QDQ {module.act_dtype} activations, int8 weight per channel"
            return nodes.qdq_linear(name, x, y, packed, module.act_scale, module.act_zero_point, module.act_dtype,
                                    bias, scale)
        return build
    level = 4 if module.int8_activations else 0

    def build(name: str, x: str, y: str):  # noqa: F811 (one of the two builders is returned)
        info[name] = f"MatMulNBits {packed.dtype()} accuracy_level {level}"
        return nodes.matmul_nbits(name, x, y, packed, bias, level, scale)
    return build


def _refusal(module) -> Optional[str]:
    if isinstance(module, W8A8Linear):
        return None  # int8 sym per channel by construction: always QDQ
    packed = module.packed
    return nodes.matmul_nbits_reason(packed.dtype(), packed.group_size(), packed.sym(),
                                     torch.ops.lwq.unpack_weight(packed)[3] is not None, packed.in_features())


def export_quantized(data_file: str, config: str, out: str) -> Report:
    """A quantized lwq model from its data-only export (`lwq export --format safetensors`; no TorchScript is
    loaded) and its config.json as OUT + OUT.data: weight-only layers as MatMulNBits (accuracy_level 4 for
    `compute int8` layers), static W8A8 layers as QDQ, input scales as a Mul, every other tensor a float32
    initializer. Refuses (ExportError naming the layer, nothing written) a layer ONNX Runtime cannot run.
    Memory: the data export's tensors (read whole) plus one layer's ONNX tensors at a time."""
    start = time.perf_counter()
    cfg = _read_config(config)
    out, data = _output_paths(out, [data_file, config])
    if not os.path.isfile(data_file):
        raise ExportError(f"data file {data_file} not found")
    try:
        modules, tensors = load_quantized_modules(data_file)
    except (OSError, ValueError, RuntimeError) as e:
        raise ExportError(str(e)) from None
    buffers = {name: tensors.pop(name) for name in ("rope_cos", "rope_sin", "model.rope_cos", "model.rope_sin")
               if name in tensors}
    skeleton = _skeleton(cfg, buffers, DEFAULT_OPSET, data_file)

    for name, module in modules.items():
        if name not in skeleton.linears:
            raise ExportError(f"{data_file}: layer '{name}' is not a linear layer of the model of {config}")
        linear = skeleton.linears[name]
        if (module.out_features, module.in_features) != (linear.out_features, linear.in_features):
            raise ExportError(f"{data_file}: layer '{name}' is [{module.out_features}, {module.in_features}], the "
                              f"model of {config} has [{linear.out_features}, {linear.in_features}]")
        if (module.bias is None) != (linear.bias is None):
            raise ExportError(f"{data_file}: layer '{name}' {'has' if module.bias is not None else 'has no'} bias, "
                              f"the model of {config} {'has' if linear.bias is not None else 'has none'}")
        reason = _refusal(module)
        if reason is not None:
            raise ExportError(f"{data_file}: layer '{name}' ({module.packed.describe()}) cannot run in ONNX "
                              f"Runtime: {reason}")
        tensors.pop(f"{name}.bias", None)
    wanted = dict(skeleton.parameters)
    for name, linear in skeleton.linears.items():
        if name not in modules:
            wanted[f"{name}.weight"] = tuple(linear.weight.shape)
            if linear.bias is not None:
                wanted[f"{name}.bias"] = tuple(linear.bias.shape)
    for name, shape in wanted.items():
        if name not in tensors:
            raise ExportError(f"{data_file}: no tensor '{name}', which the model of {config} has")
        _check_shape(data_file, name, tensors[name].shape, shape)
    unknown = sorted(set(tensors) - set(wanted))
    if unknown:
        raise ExportError(f"{data_file}: tensors the model of {config} does not have: {', '.join(unknown[:5])}")

    layers: Dict[str, str] = {}

    def build_layer(name: str) -> LayerBuilder:
        if name in modules:
            return _quantized_builder(modules.pop(name), layers)  # popped: its tensors go once written
        bias = tensors.get(f"{name}.bias")
        return lambda layer, x, y: _float_linear(layer, x, y, _as_float32(tensors[f"{layer}.weight"]),
                                                 None if bias is None else _as_float32(bias))

    count, size = _write(skeleton, cfg, out, data, build_layer, tensors.__getitem__, DEFAULT_OPSET)
    return Report(out, data, layers, count, size, time.perf_counter() - start,
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


# ----------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lwq.onnx.export",
        description="Write an lwq model as ONNX + external data (OUT and OUT.data) for ONNX Runtime: a quantized "
                    "model from its data export (lwq export --format safetensors) and config.json, or with --float "
                    "the float model of an exported model directory.")
    p.add_argument("source", help="DATA.safetensors (lwq export --format safetensors), or MODEL_DIR with --float")
    p.add_argument("out", help="the .onnx file to write; the weights go to OUT.data next to it")
    p.add_argument("--config", help="the model's config.json (python3 -m lwq.export wrote it); required for a "
                                    "data export")
    p.add_argument("--float", dest="float_dir", action="store_true",
                   help="SOURCE is a model directory (config.json + safetensors): export its float model")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.float_dir and args.config is not None:
        parser.error("--config applies to a data export; --float reads MODEL_DIR/config.json")
    if not args.float_dir and args.config is None:
        parser.error("a data export needs --config CONFIG.json (or pass --float MODEL_DIR)")
    try:
        if args.float_dir:
            if not os.path.isdir(args.source):
                raise ExportError(f"model directory {args.source} not found")
            export_float(args.source, args.out)
            print(f"wrote {os.path.abspath(args.out)} and {os.path.abspath(args.out)}.data (float32)")
        else:
            report = export_quantized(args.source, args.config, args.out)
            kinds: Dict[str, int] = {}
            for kind in report.layers.values():
                kinds[kind] = kinds.get(kind, 0) + 1
            print(f"wrote {report.out} and {report.data}: {len(report.layers)} quantized layers ("
                  + "; ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + f"), {report.initializers} "
                  f"initializers, {report.data_bytes / 2 ** 20:.1f} MiB of data; {report.seconds:.1f} s, peak RSS "
                  f"{report.peak_rss_bytes / 2 ** 20:.0f} MiB")
    except (ExportError, OSError) as e:
        print(f"lwq export: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
