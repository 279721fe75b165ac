"""torch.ops.lwq.rtn_quantize / gptq_hessian_add / gptq_quantize checked against plain torch math."""
import pytest
import torch

from conftest import CORE_LIB

torch.ops.load_library(str(CORE_LIB))
lwq = torch.ops.lwq


def activations(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 8, generator=g) @ torch.randn(8, cols, generator=g) * 0.5
    x += torch.randn(rows, cols, generator=g)
    x[:, torch.randperm(cols, generator=g)[: cols // 32]] *= 20.0
    return x


def output_mse(x, w, q):
    """Mean squared output error of the linear x @ w.T when w is replaced by q."""
    return ((x @ (w - q).T) ** 2).mean().item()


def test_hessian_add_streams_to_two_over_n_xtx():
    x = activations(300, 48, 1)
    h = torch.zeros(48, 48)
    seen = 0
    for batch in x.split(64):
        h = lwq.gptq_hessian_add(h, batch, seen)
        seen += batch.shape[0]
    torch.testing.assert_close(h, 2.0 / 300 * x.T @ x, rtol=1e-4, atol=1e-3)
    h64 = lwq.gptq_hessian_add(torch.zeros(48, 48, dtype=torch.float64), x, 0)
    assert h64.dtype == torch.float64


def test_rtn_plain_matches_quantize_weight_and_search_helps():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(32, 172, generator=g) * torch.exp(torch.randn(32, 172, generator=g))
    for dtype, sym in [("int4", True), ("int4", False), ("nf4", True)]:
        plain = lwq.rtn_quantize(w, dtype, 64, sym, False)
        ref = lwq.quantize_weight(w, dtype, 64, sym)
        for a, b in zip(lwq.unpack_weight(plain), lwq.unpack_weight(ref)):
            assert (a is None and b is None) or torch.equal(a, b)
        searched = lwq.rtn_quantize(w, dtype, 64, sym, True)
        err_plain = ((lwq.dequantize_weight(plain) - w) ** 2).mean()
        err_search = ((lwq.dequantize_weight(searched) - w) ** 2).mean()
        assert err_search < 0.98 * err_plain, (dtype, sym)


def test_gptq_identity_hessian_is_rtn():
    w = torch.randn(16, 100, generator=torch.Generator().manual_seed(3))
    packed = lwq.gptq_quantize(w, torch.eye(100), "int4", 32, False, 0.01, 128, False, False)
    assert torch.equal(lwq.dequantize_weight(packed), lwq.dequantize_weight(lwq.quantize_weight(w, "int4", 32, False)))


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lowers_output_error(act_order):
    x = activations(512, 256, 4)
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(5)) * 0.05
    h = lwq.gptq_hessian_add(torch.zeros(256, 256), x, 0)
    packed = lwq.gptq_quantize(w, h, "int4", 64, True, 0.01, 128, act_order, False)
    q, scales, zeros, g_idx = lwq.unpack_weight(packed)
    assert zeros is None and scales.shape == (64, 4)
    assert (g_idx is not None) == act_order
    # Torch's own dequantization of the logical form (int sym: scale * q) is what the op packed.
    groups = g_idx.long() if act_order else torch.arange(256) // 64
    deq = q.float() * scales[:, groups]
    torch.testing.assert_close(lwq.dequantize_weight(packed), deq, rtol=0, atol=0)
    rtn = lwq.dequantize_weight(lwq.quantize_weight(w, "int4", 64, True))
    assert output_mse(x, w, deq) < 0.5 * output_mse(x, w, rtn)


def test_gptq_rejects_nan():
    h = torch.eye(8)
    h[2, 2] = float("nan")
    with pytest.raises(RuntimeError, match="hessian contains NaN"):
        lwq.gptq_quantize(torch.randn(4, 8), h, "int4", -1, True, 0.01, 128, False, False)
