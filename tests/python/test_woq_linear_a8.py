"""torch.ops.lwq.woq_linear_a8 from Python: close to woq_linear (int8 activation rounding only), scriptable and
saved/loaded with the same bits, meta shapes, and a clear refusal of the dtypes it does not implement."""
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import OPS_LIB


class QLinearA8(torch.nn.Module):
    def __init__(self, weight, bias, dtype, group_size, sym):
        super().__init__()
        self.packed = torch.ops.lwq.quantize_weight(weight, dtype, group_size, sym)
        self.bias = torch.nn.Parameter(bias)

    def forward(self, x):
        return torch.ops.lwq.woq_linear_a8(x, self.packed, self.bias)


@pytest.mark.parametrize("dtype,sym", [("int8", True), ("int8", False), ("int4", True), ("int4", False),
                                       ("int4_fullrange", True)])
@pytest.mark.parametrize("group_size", [-1, 32, 48])
def test_close_to_woq_linear(lwq_ops, dtype, sym, group_size):
    torch.manual_seed(0)
    w, b, x = torch.randn(19, 100), torch.randn(19), torch.randn(2, 7, 100)
    packed = lwq_ops.quantize_weight(w, dtype, group_size, sym)
    exact = lwq_ops.woq_linear(x, packed, b)
    got = lwq_ops.woq_linear_a8(x, packed, b)
    assert got.shape == exact.shape == (2, 7, 19)
    # Each x is rounded to 1/254 of its block's max |x|: the output error is a fraction of a percent of |x W^T|.
    rel = ((got - exact).norm() / (exact - b).norm()).item()
    assert 0 < rel < 0.01, rel


def test_scripted_module_survives_save_and_load_in_a_fresh_process(lwq_ops, tmp_path):
    torch.manual_seed(1)
    model = QLinearA8(torch.randn(24, 64), torch.randn(24), "int4", 32, True)
    x = torch.randn(3, 64)
    scripted = torch.jit.script(model)
    want = scripted(x)
    path = tmp_path / "a8.pt"
    torch.jit.save(scripted, str(path))
    torch.save(x, str(tmp_path / "x.pt"))
    torch.save(want, str(tmp_path / "want.pt"))
    child = textwrap.dedent(f"""
        import torch
        torch.ops.load_library({str(OPS_LIB)!r})
        m = torch.jit.load({str(path)!r})
        x = torch.load({str(tmp_path / "x.pt")!r})
        want = torch.load({str(tmp_path / "want.pt")!r})
        assert torch.equal(m(x), want)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_meta_shape_and_refused_dtypes(lwq_ops):
    packed = lwq_ops.quantize_weight(torch.randn(8, 64), "int4", 32, True)
    y = lwq_ops.woq_linear_a8(torch.empty(3, 5, 64, device="meta"), packed, None)
    assert y.is_meta and y.shape == (3, 5, 8)
    nf4 = lwq_ops.quantize_weight(torch.randn(8, 64), "nf4", 32, True)
    with pytest.raises(RuntimeError, match="got dtype nf4; use woq_linear"):
        lwq_ops.woq_linear_a8(torch.randn(2, 64), nf4, None)
    x = torch.randn(2, 64)
    x[0, 3] = float("nan")
    with pytest.raises(RuntimeError, match="x contains NaN or Inf"):
        lwq_ops.woq_linear_a8(x, packed, None)
