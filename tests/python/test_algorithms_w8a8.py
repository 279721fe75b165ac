"""Observers, SmoothQuant and static W8A8 quantization as Python sees them (torch.ops.lwq from liblwq.so)."""
import math

import pytest
import torch


def outlier_batches(n_batches, rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    gain = torch.ones(cols)
    gain[1], gain[cols // 2], gain[-1] = 50.0, -40.0, 30.0
    return [torch.randn(rows, cols, generator=g) * gain for _ in range(n_batches)]


def fake_quant_reference(x, w_dequant, scale, zp, bias, act_dtype):
    """The W8A8 arithmetic written out in torch: per-tensor activation codes, then a float matmul."""
    qmin, qmax = (0, 255) if act_dtype == "uint8" else (-128, 127)
    xq = torch.clamp(torch.round(x / scale) + zp, qmin, qmax)
    y = ((xq - zp) * scale) @ w_dequant.t()
    return y if bias is None else y + bias


def test_observe_activation_qparams_minmax_formula(lwq_core):
    batches = outlier_batches(3, 5, 16, 1)
    lo = min(b.min().item() for b in batches)
    hi = max(b.max().item() for b in batches)
    scale, zp = lwq_core.observe_activation_qparams(batches, "minmax", "uint8")
    assert scale == pytest.approx((hi - lo) / 255, rel=1e-12)
    assert zp == max(0, min(255, round(-lo / scale)))
    scale8, zp8 = lwq_core.observe_activation_qparams(batches, observer="minmax", act_dtype="int8")
    assert scale8 == pytest.approx(max(-lo, hi) / 127.5, rel=1e-12)
    assert zp8 == 0


@pytest.mark.parametrize("observer", ["minmax", "ema", "percentile", "kl"])
def test_every_observer_gives_a_usable_range(lwq_core, observer):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40000, generator=g)
    x[::20000] = 80.0  # rare outliers: 0.005 % of the values, beyond the 99.99th percentile
    scale, zp = lwq_core.observe_activation_qparams([x[:25000], x[25000:]], observer, "uint8")
    assert scale > 0 and 0 <= zp <= 255
    if observer in ("percentile", "kl"):
        assert scale < 0.5 * (x.max() - x.min()).item() / 255  # the outliers are clipped


def test_observer_errors_name_the_problem(lwq_core):
    bad = torch.randn(3, 4)
    bad[1, 2] = math.nan
    with pytest.raises(RuntimeError, match="kl observer of .*NaN or Inf"):
        lwq_core.observe_activation_qparams([bad], "kl", "uint8")
    with pytest.raises(RuntimeError, match="expected one of: minmax, ema, percentile, kl"):
        lwq_core.observe_activation_qparams([bad], "entropy", "uint8")
    with pytest.raises(RuntimeError, match="uint8, int8"):
        lwq_core.observe_activation_qparams([bad], "minmax", "fp8")


def test_smoothquant_scales_and_equivalence(lwq_core):
    batches = outlier_batches(2, 6, 24, 3)
    w = torch.randn(10, 24, generator=torch.Generator().manual_seed(4))
    absmax = lwq_core.channel_absmax(batches)
    torch.testing.assert_close(absmax, torch.cat(batches).abs().amax(0))
    s = lwq_core.smoothquant_scales(absmax, w, 0.5)
    expected = absmax.double().sqrt() / w.abs().amax(0).double().clamp_min(1e-5).sqrt()
    torch.testing.assert_close(s, expected.float())
    x = batches[0]
    torch.testing.assert_close((x / s) @ (w * s).t(), x @ w.t(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act_dtype", ["uint8", "int8"])
def test_w8a8_quantize_with_smoothquant(lwq_core, act_dtype):
    batches = outlier_batches(3, 8, 40, 5)
    g = torch.Generator().manual_seed(6)
    w = torch.randn(12, 40, generator=g) * 0.05
    bias = torch.randn(12, generator=g)
    packed, scale, zp, smooth, report = lwq_core.w8a8_quantize(w, bias, batches, "minmax", act_dtype, 0.5)
    assert packed.dtype() == "int8" and packed.group_size() == -1 and packed.sym()
    assert smooth is not None and smooth.shape == (40,)
    assert set(report) == {"weight_mse", "output_mse", "baseline_output_mse", "seconds"}
    assert 0 < report["output_mse"] < 0.5 * report["baseline_output_mse"]

    # The report's output error is that of the fake-quant reference written out here.
    w_deq = lwq_core.dequantize_weight(packed)
    y_ref = torch.cat([x @ w.t() + bias for x in batches])
    y_fq = torch.cat([fake_quant_reference(x / smooth, w_deq, scale, zp, bias, act_dtype) for x in batches])
    assert report["output_mse"] == pytest.approx((y_fq - y_ref).pow(2).mean().item(), rel=1e-3)
    y_op = lwq_core.w8a8_fake_quant_linear(batches[0] / smooth, w_deq, scale, zp, bias, act_dtype)
    torch.testing.assert_close(y_op, fake_quant_reference(batches[0] / smooth, w_deq, scale, zp, bias, act_dtype))

    # And the packed result runs through the integer kernel with the same numbers.
    y_kernel = lwq_core.w8a8_linear(batches[0] / smooth, packed, scale, zp, bias, act_dtype)
    torch.testing.assert_close(y_kernel, y_op, rtol=1e-4, atol=1e-4)


def test_w8a8_quantize_without_smoothing(lwq_core):
    batches = outlier_batches(1, 4, 16, 7)
    w = torch.randn(5, 16, generator=torch.Generator().manual_seed(8))
    packed, scale, zp, smooth, report = lwq_core.w8a8_quantize(w, None, batches)
    assert smooth is None
    assert report["output_mse"] == report["baseline_output_mse"]
    assert (scale, zp) == tuple(lwq_core.observe_activation_qparams(batches))
    with pytest.raises(RuntimeError, match=r"calibration batch 0 must be \[\.\.\., 16\]"):
        lwq_core.w8a8_quantize(w, None, [torch.randn(2, 15)])


def test_ops_are_scriptable(lwq_core):
    @torch.jit.script
    def calibrate(w: torch.Tensor, batches: list[torch.Tensor]) -> tuple[float, int, float]:
        scale, zp = torch.ops.lwq.observe_activation_qparams(batches, "ema", "int8")
        packed, act_scale, act_zp, smooth, report = torch.ops.lwq.w8a8_quantize(w, None, batches, "kl", "uint8",
                                                                                0.5)
        return scale, zp, report["output_mse"]

    batches = outlier_batches(2, 4, 16, 9)
    scale, zp, mse = calibrate(torch.randn(3, 16), batches)
    assert scale > 0 and zp == 0 and mse > 0
