"""lwq from Python: load the operator library, load quantized TorchScript models, quantize ``nn.Linear`` layers in
place, and read lwq's plain safetensors exports without pickle or TorchScript.

    import lwq
    model = lwq.load("q.pt")                          # torch.jit.load after loading liblwq_ops.so
    lwq.quantize_(module, dtype="int4", group_size=128)  # nn.Linear -> lwq.QuantLinear, in place
    lwq.load_into(module, "q.safetensors")            # an `lwq export --format safetensors` file, data only

Modules imported on demand: lwq.llama (the Llama of the exported model contract, greedy decoding, NLL), lwq.llama2c
(llama2.c checkpoints and tokenizer), lwq.safetensors (reader and streaming writer), lwq.export (the exporter:
python3 -m lwq.export --help), lwq.tool (running a build's lwq tool).

liblwq_ops.so is looked for in $LWQ_LIBRARY_DIR, $LWQ_BUILD_DIR/lib, the install prefix this package was installed
with (cmake --install), and the build/ directory of a source checkout, in that order (see find_library).
Use Debian's /usr/bin/python3 (python3-torch).
"""
from ._library import CORE_LIBRARY, OPS_LIBRARY, find_library, load_library
from .checkpoint import load_into, load_packed_safetensors, load_quantized_modules
from .modules import DEFAULT_EXCLUDE, QuantLinear, W8A8Linear, load, quantize_, quantize_linear
from .safetensors import read_safetensors

__all__ = [
    "CORE_LIBRARY", "DEFAULT_EXCLUDE", "OPS_LIBRARY", "QuantLinear", "W8A8Linear", "find_library", "load",
    "load_into", "load_library", "load_packed_safetensors", "load_quantized_modules", "quantize_", "quantize_linear",
    "read_safetensors",
]
