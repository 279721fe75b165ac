"""lwq.awq_search / teq_quantize from Python: never worse than RTN (computed here with the RTN ops).

The lwq_core fixture (conftest.py) loads $LWQ_BUILD_DIR/lib/liblwq.so."""
import pytest
import torch


def make_layer(seed, n=96, in_features=160, outs=(64,), n_outliers=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_features, generator=g)
    channels = torch.randperm(in_features, generator=g)[:n_outliers]
    x[:, channels] *= 20 + 30 * torch.rand(n_outliers, generator=g)
    weights = [torch.randn(o, in_features, generator=g) * 0.02 for o in outs]
    return x, weights


def rtn_error(lwq, x, w, dtype, group_size, sym):
    packed = lwq.quantize_weight(w, dtype, group_size, sym)
    w_hat = lwq.dequantize_weight(packed)
    return (x @ w.T - x @ w_hat.T).pow(2).mean().item()


def scaled_error(lwq, x, w, scales, packed):
    w_hat = lwq.dequantize_weight(packed)
    return (x @ w.T - (x / scales) @ w_hat.T).pow(2).mean().item()


@pytest.mark.parametrize("dtype,group_size,sym", [("int4", 32, True), ("int4", 64, False), ("int3", 32, True)])
def test_awq_search_beats_rtn(lwq_core, dtype, group_size, sym):
    lwq = lwq_core
    x, weights = make_layer(1, outs=(64, 32))
    scales, packed = lwq.awq_search(x, weights, dtype, group_size, sym, 20, True)
    assert scales.shape == (x.shape[1],) and scales.dtype == torch.float32
    assert len(packed) == len(weights)
    awq = sum(scaled_error(lwq, x, w, scales, p) for w, p in zip(weights, packed))
    rtn = sum(rtn_error(lwq, x, w, dtype, group_size, sym) for w in weights)
    assert awq < 0.8 * rtn


def test_awq_search_defaults_and_woq_linear(lwq_core):
    lwq = lwq_core
    x, (w,) = make_layer(2, in_features=172)
    scales, (packed,) = lwq.awq_search(x, [w], "int4", 128, True)
    # The packed weight runs in the kernels on the scaled input.
    y = lwq.woq_linear(x / scales, packed, None)
    y_ref = (x / scales) @ lwq.dequantize_weight(packed).T
    assert torch.allclose(y, y_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype,group_size,sym", [("int4", 32, True), ("int4", 128, False)])
def test_teq_quantize_not_worse_than_rtn(lwq_core, dtype, group_size, sym):
    lwq = lwq_core
    x, weights = make_layer(3, outs=(48,))
    scales, packed = lwq.teq_quantize(x, weights, dtype, group_size, sym, 100, 1e-3, 0)
    teq = scaled_error(lwq, x, weights[0], scales, packed[0])
    rtn = rtn_error(lwq, x, weights[0], dtype, group_size, sym)
    assert teq < rtn
    again, _ = lwq.teq_quantize(x, weights, dtype, group_size, sym, 100, 1e-3, 0)
    assert torch.equal(scales, again)


def test_teq_runs_under_no_grad_and_inference_mode(lwq_core):
    lwq = lwq_core
    x, weights = make_layer(4, outs=(16,))
    with torch.no_grad():
        a, _ = lwq.teq_quantize(x, weights, "int4", 32, True, 20)
    with torch.inference_mode():
        b, _ = lwq.teq_quantize(x.clone(), [w.clone() for w in weights], "int4", 32, True, 20)
    assert torch.equal(a, b)


def test_nan_input_is_a_clear_error(lwq_core):
    lwq = lwq_core
    x, weights = make_layer(5, outs=(16,))
    x[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="calibration inputs x"):
        lwq.awq_search(x, weights, "int4", 32, True)
    with pytest.raises(RuntimeError, match="calibration inputs x"):
        lwq.teq_quantize(x, weights, "int4", 32, True, 5)
