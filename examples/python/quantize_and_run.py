#!/usr/bin/python3
"""Quantize a PyTorch module's Linear layers with lwq, run it, save it as TorchScript and run the reloaded archive.

    /usr/bin/python3 examples/python/quantize_and_run.py

Uses the package in python/ of this checkout (or an installed one on PYTHONPATH); liblwq_ops.so is found as
lwq.find_library says (LWQ_BUILD_DIR=/path/to/build to choose a build).
"""
import pathlib
import sys
import tempfile

import torch

try:
    import lwq
except ImportError:  # running from a source checkout
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "python"))
    import lwq


class MLP(torch.nn.Module):
    def __init__(self, dim: int = 256, hidden: int = 1024):
        super().__init__()
        self.up = torch.nn.Linear(dim, hidden)
        self.down = torch.nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


def main() -> None:
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(4, 256)
    with torch.no_grad():
        reference = model(x)

    # Every nn.Linear becomes an lwq.QuantLinear: int4 codes, one scale per group of 128 inputs.
    replaced = lwq.quantize_(model, dtype="int4", group_size=128, sym=True)
    print("quantized:", ", ".join(replaced))
    print(model)
    with torch.no_grad():
        y = model(x)
    print(f"relative error of the int4 model: {((y - reference).norm() / reference.norm()).item():.4f}")

    # TorchScript keeps the packed weights; the archive runs wherever liblwq_ops.so is loaded (Python or C++).
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "mlp_int4.pt"
        torch.jit.script(model).save(str(path))
        reloaded = lwq.load(path)
        with torch.no_grad():
            same = torch.equal(reloaded(x), y)
        print(f"saved {path.stat().st_size} bytes; reloaded output identical: {same}")


if __name__ == "__main__":
    main()
