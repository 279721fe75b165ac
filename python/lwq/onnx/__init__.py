"""The ONNX Runtime half of lwq (docs/onnx.md). Needs the `onnx` and `onnxruntime` packages (tests/requirements.txt
installs them into .venv); lwq itself imports without them.

Modules, each imported on demand:
  lwq.onnx.nodes      lwq's packed weights as ONNX Runtime nodes: MatMulNBits (weight-only) and QDQ (static W8A8),
                      and which lwq formats ONNX Runtime can express
  lwq.onnx.export     lwq models out: the float model of an exported model directory, and a quantized model's data
                      export (`lwq export --format safetensors`) as ONNX + external data (python3 -m lwq.onnx.export)
  lwq.onnx.graph      ONNX models in: the graph without its weights, initializers read one at a time from external
                      data, and the split into the repeated blocks' subgraphs
  lwq.onnx.quantize   layer-wise quantization of an ONNX model, one block at a time in ONNX Runtime
                      (python3 -m lwq.onnx.quantize; `lwq quantize MODEL.onnx` hands .onnx inputs to it)
"""
