"""`lwq export` / `lwq import` end to end: GPTQ checkpoints written here by an independent Python packer (bit streams
built bit by bit), imported, run, exported again; plain safetensors exports; and the refusals."""
import json

import pytest
import torch

from conftest import LWQ, fails, lwq, ok
from fixtures import generate
from fixtures import make_test_models as mtm
from lwq.safetensors import read_safetensors, write_safetensors

LINEARS = [f"layers.{i}.{p}" for i in range(mtm.SCRIPTED_BLOCKS) for p in ("up", "gate", "down")]


def read_tensors(path):
    return read_safetensors(path)[0]


def write_sorted(path, tensors):
    """A safetensors file with the tensors in name order."""
    write_safetensors(path, {name: tensors[name] for name in sorted(tensors)})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    assert LWQ.exists(), f"{LWQ} is missing: build first"
    return generate("make_test_models.py", tmp_path_factory.mktemp("models"), 5)


# --- GPTQ tensors, written and read bit by bit (the layout of docs/interop.md) ---------------------------------

def to_words(codes, bits):
    """codes int64 [R, C] -> int32 [R*bits/32, C]: each column's codes end to end, least significant bit first."""
    r, c = codes.shape
    stream = ((codes[:, None, :] >> torch.arange(bits)[None, :, None]) & 1).reshape(r * bits // 32, 32, c)
    words = (stream << torch.arange(32)[None, :, None]).sum(1)  # int64, 0 .. 2^32 - 1
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def from_words(words, bits):
    w, c = words.shape
    stream = ((words.to(torch.int64) & 0xFFFFFFFF)[:, None, :] >> torch.arange(32)[None, :, None]) & 1
    return (stream.reshape(w * 32 // bits, bits, c) << torch.arange(bits)[None, :, None]).sum(1)


def dequantize(t, bits, v1=True):
    """fp32 [N, K] weight of one layer's GPTQ tensors: scales[g, n] * (code - zero)."""
    codes = from_words(t["qweight"], bits)                 # [K, N]
    zeros = from_words(t["qzeros"].t().contiguous(), bits).t() + (1 if v1 else 0)  # [G, N]
    g = t["g_idx"].long()
    return (t["scales"].float()[g] * (codes - zeros[g]).float()).t().contiguous()


def random_gptq_layer(out_f, in_f, bits, group_size, sym, act_order, gen, v1=True):
    groups = 1 if group_size == -1 else -(-in_f // group_size)
    maxq = 2 ** bits - 1
    codes = torch.randint(0, maxq + 1, (in_f, out_f), generator=gen)
    if sym:
        zeros = torch.full((groups, out_f), 2 ** (bits - 1))
    else:
        zeros = torch.randint(1 if v1 else 0, maxq + 1, (groups, out_f), generator=gen)
    stored = zeros - 1 if v1 else zeros
    # Scales of ~1/(sqrt(in) * levels): weights of the size the test model was trained with.
    scales = (torch.rand(groups, out_f, generator=gen) + 0.5) * (2.0 / (in_f ** 0.5 * maxq))
    size = in_f if group_size == -1 else group_size
    order = torch.randperm(in_f, generator=gen) if act_order else torch.arange(in_f)
    g_idx = torch.empty(in_f, dtype=torch.int32)
    g_idx[order] = (torch.arange(in_f) // size).to(torch.int32)
    return {"qweight": to_words(codes, bits), "qzeros": to_words(stored.t().contiguous(), bits).t().contiguous(),
            "scales": scales.half(), "g_idx": g_idx}


def write_gptq(directory, models, bits, group_size, sym, act_order, seed, prefix="", v1=True):
    """A GPTQ checkpoint of the scripted test model; returns the float weights it stands for."""
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    floats = read_tensors(models / "scripted.safetensors")
    tensors, weights = {}, {}
    for name in LINEARS:
        out_f, in_f = floats[name + ".weight"].shape
        t = random_gptq_layer(out_f, in_f, bits, group_size, sym, act_order, gen, v1)
        for part, value in t.items():
            tensors[f"{prefix}{name}.{part}"] = value
        weights[name + ".weight"] = dequantize(t, bits, v1)
    for name, value in floats.items():
        if name not in weights:  # everything but the quantized weights, under its own name
            tensors[prefix + name] = value
    write_sorted(directory / "model.safetensors", tensors)
    config = {"bits": bits, "group_size": group_size, "desc_act": act_order, "sym": sym, "damp_percent": 0.01,
              "true_sequential": True, "static_groups": False, "model_file_base_name": "model",
              "quant_method": "gptq", "checkpoint_format": "gptq" if v1 else "gptq_v2"}
    (directory / "quantize_config.json").write_text(json.dumps(config))
    return {**floats, **weights}


def reference_output(weights, x):
    model = mtm.BlockModel(mtm.SCRIPTED_DIM, mtm.SCRIPTED_HIDDEN, mtm.SCRIPTED_BLOCKS).eval()
    model.load_state_dict(weights)
    with torch.no_grad():
        return model(x)


def run(lwq_ops, path, x):
    with torch.no_grad():
        return torch.jit.load(str(path))(x)


def packed_states(lwq_ops, path):
    module = torch.jit.load(str(path))
    out = {}
    for name, m in module.named_modules():
        if hasattr(m, "packed") and m.packed is not None:
            out[name] = m.packed._get_method("__getstate__")()
    return out


def assert_same_states(a, b):
    assert a.keys() == b.keys()
    for name in a:
        for i, (u, v) in enumerate(zip(a[name], b[name])):
            same = torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v
            assert same, (name, i)


CASES = [  # bits, group size, sym, act-order
    (4, 16, True, True),
    (4, 32, False, False),  # 80 inputs: a ragged last group of 16
    (8, 16, False, True),
    (8, -1, True, False),
]


@pytest.mark.parametrize("bits,group_size,sym,act_order", CASES)
def test_gptq_import_runs_and_round_trips_exactly(lwq_ops, models, tmp_path, bits, group_size, sym, act_order):
    ckpt = tmp_path / "gptq"
    weights = write_gptq(ckpt, models, bits, group_size, sym, act_order, seed=bits * 10 + group_size)
    ok(lwq("import", "--format", "gptq", ckpt, "--model", models / "scripted.pt", "--out", tmp_path / "q.pt"))
    x = torch.load(models / "scripted_reference.pt")["x"]
    y = run(lwq_ops, tmp_path / "q.pt", x)
    # The imported model computes what the GPTQ tensors mean (only fp32 summation order differs).
    torch.testing.assert_close(y, reference_output(weights, x), rtol=1e-4, atol=1e-5)

    # gptq -> lwq -> gptq: the same tensors, bit for bit, and the same quantize_config fields.
    out = tmp_path / "exported"
    ok(lwq("export", "--format", "gptq", tmp_path / "q.pt", out))
    original = read_tensors(ckpt / "model.safetensors")
    exported = read_tensors(out / "model.safetensors")
    assert original.keys() == exported.keys()
    for name in original:
        assert original[name].dtype == exported[name].dtype and torch.equal(original[name], exported[name]), name
    cfg_in = json.loads((ckpt / "quantize_config.json").read_text())
    cfg_out = json.loads((out / "quantize_config.json").read_text())
    for key in ("bits", "group_size", "desc_act", "sym", "quant_method", "checkpoint_format"):
        assert cfg_in[key] == cfg_out[key], key

    # lwq -> gptq -> lwq: the same packed weights and the same outputs, exactly.
    ok(lwq("import", "--format", "gptq", out, "--model", models / "scripted.pt", "--out", tmp_path / "q2.pt"))
    assert_same_states(packed_states(lwq_ops, tmp_path / "q.pt"), packed_states(lwq_ops, tmp_path / "q2.pt"))
    assert torch.equal(run(lwq_ops, tmp_path / "q2.pt", x), y)


def test_plain_safetensors_round_trip_is_exact(lwq_ops, models, tmp_path):
    q = tmp_path / "q.pt"
    ok(lwq("quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors", "--algo", "rtn",
           "--dtype", "int3", "--group-size", "32", "--asym", "--out", q, "--quiet"))
    plain = tmp_path / "q.safetensors"
    ok(lwq("export", "--format", "safetensors", q, plain))
    ok(lwq("import", "--format", "safetensors", plain, "--model", models / "scripted.pt", "--out", tmp_path / "q2.pt"))
    assert_same_states(packed_states(lwq_ops, q), packed_states(lwq_ops, tmp_path / "q2.pt"))
    x = torch.load(models / "scripted_reference.pt")["x"]
    assert torch.equal(run(lwq_ops, q, x), run(lwq_ops, tmp_path / "q2.pt", x))
    # Plain data: a JSON header with the layer metadata, no pickle and no code.
    data = plain.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert header["layers.0.up.qweight"]["dtype"] == "U8" and "layers.0.up.zeros" in header
    assert "lm_head.weight" in header and "layers.0.up.weight" not in header
    layers = json.loads(header["__metadata__"]["lwq_layers"])
    assert layers["layers.0.up"] == {"module": "layers.0.up", "weight_attr": "weight", "dtype": "int3",
                                     "out_features": 80, "in_features": 48, "group_size": 32, "sym": False}


def test_quantized_model_exports_with_rounded_scales_only_when_asked(lwq_ops, models, tmp_path):
    q = tmp_path / "q.pt"
    ok(lwq("quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors", "--algo", "rtn",
           "--dtype", "int4", "--group-size", "16", "--out", q, "--quiet"))
    out = tmp_path / "gptq"
    fails(lwq("export", "--format", "gptq", q, out), "layer 'layers.0.up'", "float16", "--round-scales")
    assert not (out / "model.safetensors").exists()
    result = ok(lwq("export", "--format", "gptq", "--round-scales", q, out))
    assert "rounded to float16" in result.stderr
    ok(lwq("import", "--format", "gptq", out, "--model", models / "scripted.pt", "--out", tmp_path / "q2.pt"))
    x = torch.load(models / "scripted_reference.pt")["x"]
    y, y2 = run(lwq_ops, q, x), run(lwq_ops, tmp_path / "q2.pt", x)
    assert 0 < ((y2 - y).norm() / y.norm()).item() < 1e-3  # only the fp16 rounding of the scales


def test_v2_checkpoint_keeps_zero_points_of_zero(lwq_ops, models, tmp_path):
    ckpt = tmp_path / "gptq_v2"
    weights = write_gptq(ckpt, models, 4, 16, False, False, seed=9, v1=False)
    ok(lwq("import", "--format", "gptq", ckpt, "--model", models / "scripted.pt", "--out", tmp_path / "q.pt"))
    x = torch.load(models / "scripted_reference.pt")["x"]
    torch.testing.assert_close(run(lwq_ops, tmp_path / "q.pt", x), reference_output(weights, x), rtol=1e-4, atol=1e-5)
    fails(lwq("export", "--format", "gptq", tmp_path / "q.pt", tmp_path / "v1"), "zero point(s) are 0", "gptq_v2")
    out = tmp_path / "v2"
    ok(lwq("export", "--format", "gptq", "--checkpoint-format", "gptq_v2", tmp_path / "q.pt", out))
    assert torch.equal(read_tensors(out / "model.safetensors")["layers.1.down.qzeros"],
                       read_tensors(ckpt / "model.safetensors")["layers.1.down.qzeros"])


def test_import_with_renamed_prefix(lwq_ops, models, tmp_path):
    ckpt = tmp_path / "gptq"
    write_gptq(ckpt, models, 4, 16, True, False, seed=3, prefix="model.")
    fails(lwq("import", "--format", "gptq", ckpt, "--model", models / "scripted.pt", "--out", tmp_path / "q.pt"),
          "model.layers.0.up", "are not linear layers of the model")
    assert not (tmp_path / "q.pt").exists()
    ok(lwq("import", "--format", "gptq", ckpt, "--model", models / "scripted.pt", "--out", tmp_path / "q.pt",
           "--rename", "model.="))


def test_export_refusals(lwq_ops, models, tmp_path):
    nf4 = tmp_path / "nf4.pt"
    ok(lwq("quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors", "--algo", "rtn",
           "--dtype", "nf4", "--group-size", "16", "--out", nf4, "--quiet"))
    fails(lwq("export", "--format", "gptq", nf4, tmp_path / "a"), "layer 'layers.0.up'", "nf4", "no GPTQ form")
    # int3 needs in_features % 32 == 0 (48 is not).
    int3 = tmp_path / "int3.pt"
    ok(lwq("quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors", "--algo", "rtn",
           "--dtype", "int3", "--group-size", "16", "--out", int3, "--quiet"))
    fails(lwq("export", "--format", "gptq", "--round-scales", int3, tmp_path / "b"), "in_features 48 x 3 bits")
    # A directory holding other files is not overwritten.
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    fails(lwq("export", "--format", "gptq", "--round-scales", int3, busy), "notes.txt")
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    fails(lwq("export", "--format", "gptq", models / "scripted.pt", tmp_path / "c"), "no quantized layers")
    fails(lwq("export", "--format", "onnx", nf4, tmp_path / "d"), "--format must be gptq or safetensors")
    fails(lwq("export", nf4, tmp_path / "e"), "--format is required")


def test_import_refusals(lwq_ops, models, tmp_path):
    ckpt = tmp_path / "gptq"
    write_gptq(ckpt, models, 4, 16, True, False, seed=4)
    cfg = json.loads((ckpt / "quantize_config.json").read_text())
    # sym in the config, but asym zero points in the tensors.
    bad = tmp_path / "bad_sym"
    write_gptq(bad, models, 4, 16, False, False, seed=4)
    (bad / "quantize_config.json").write_text(json.dumps({**cfg, "sym": True}))
    fails(lwq("import", "--format", "gptq", bad, "--model", models / "scripted.pt", "--out", tmp_path / "q.pt"),
          "layer 'layers.0.up'", "sym")
    # A missing non-linear parameter (the model's archive is empty) is named.
    missing = tmp_path / "missing"
    missing.mkdir()
    tensors = read_tensors(ckpt / "model.safetensors")
    del tensors["layers.2.norm.weight"]
    write_sorted(missing / "model.safetensors", tensors)
    (missing / "quantize_config.json").write_text(json.dumps(cfg))
    fails(lwq("import", "--format", "gptq", missing, "--model", models / "scripted.pt", "--out", tmp_path / "q.pt"),
          "layers.2.norm.weight")
    no_cfg = tmp_path / "no_cfg"
    no_cfg.mkdir()
    (no_cfg / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes())
    fails(lwq("import", "--format", "gptq", no_cfg, "--model", models / "scripted.pt", "--out", tmp_path / "q.pt"),
          "quantize_config.json")
    fails(lwq("import", "--format", "safetensors", ckpt / "model.safetensors", "--model", models / "scripted.pt",
              "--out", tmp_path / "q.pt"), "not an lwq safetensors export")
    assert not (tmp_path / "q.pt").exists()


def test_help():
    for command in ("export", "import"):
        result = lwq(command, "--help")
        assert result.returncode == 0 and f"usage: lwq {command}" in result.stdout


@pytest.fixture(scope="module")
def calibration(models):
    path = models / "calib.safetensors"
    write_safetensors(path, {"inputs": torch.randn(8, 5, mtm.SCRIPTED_DIM, generator=torch.Generator().manual_seed(1))})
    return path


def test_gptq_act_order_model_exports_and_comes_back(lwq_ops, models, calibration, tmp_path):
    q = tmp_path / "q.pt"
    ok(lwq("quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors", "--algo", "gptq",
           "--act-order", "--dtype", "int4", "--group-size", "16", "--asym", "--calib-tensors", calibration,
           "--out", q, "--quiet"))
    out = tmp_path / "gptq"
    ok(lwq("export", "--format", "gptq", "--round-scales", q, out))
    cfg = json.loads((out / "quantize_config.json").read_text())
    assert cfg["desc_act"] is True and cfg["sym"] is False and cfg["group_size"] == 16
    tensors = read_tensors(out / "model.safetensors")
    assert not torch.equal(tensors["layers.0.up.g_idx"], torch.arange(48, dtype=torch.int32) // 16)
    ok(lwq("import", "--format", "gptq", out, "--model", models / "scripted.pt", "--out", tmp_path / "q2.pt"))
    x = torch.load(models / "scripted_reference.pt")["x"]
    y, y2 = run(lwq_ops, q, x), run(lwq_ops, tmp_path / "q2.pt", x)
    assert ((y2 - y).norm() / y.norm()).item() < 1e-3
    ok(lwq("export", "--format", "gptq", tmp_path / "q2.pt", tmp_path / "again"))
    again = read_tensors(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(tensors[k], again[k]) for k in tensors) and tensors.keys() == again.keys()


def test_w8a8_model_is_refused(lwq_ops, models, calibration, tmp_path):
    q = tmp_path / "w8a8.pt"
    ok(lwq("quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors", "--algo", "w8a8",
           "--dtype", "int8", "--group-size", "-1", "--calib-tensors", calibration, "--out", q, "--quiet"))
    for fmt in ("gptq", "safetensors"):
        fails(lwq("export", "--format", fmt, q, tmp_path / f"out_{fmt}"), "W8A8", "lwq::w8a8_linear")


@pytest.mark.parametrize("algo,extra", [
    ("rtn", ["--mse-search"]),
    ("gptq", ["--asym"]),
    ("awq", []),
    ("teq", ["--teq-steps", "3"]),
])
def test_float16_scales_from_quantize_export_to_gptq_exactly(lwq_ops, models, calibration, tmp_path, algo, extra):
    """--scale-dtype fp16: the scales are float16 values before the codes are chosen, so the GPTQ export needs no
    --round-scales and the imported model is the same model, state for state and output for output."""
    q = tmp_path / "q.pt"
    calib = [] if algo == "rtn" else ["--calib-tensors", calibration]
    ok(lwq("quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors", "--algo", algo,
           "--dtype", "int4", "--group-size", "16", "--scale-dtype", "fp16", *extra, *calib, "--out", q, "--quiet"))
    out = tmp_path / "gptq"
    result = ok(lwq("export", "--format", "gptq", q, out))
    assert "rounded" not in result.stderr
    ok(lwq("import", "--format", "gptq", out, "--model", models / "scripted.pt", "--out", tmp_path / "q2.pt"))
    assert_same_states(packed_states(lwq_ops, q), packed_states(lwq_ops, tmp_path / "q2.pt"))
    x = torch.load(models / "scripted_reference.pt")["x"]
    assert torch.equal(run(lwq_ops, q, x), run(lwq_ops, tmp_path / "q2.pt", x))


def test_float16_scales_of_rtn_are_those_of_the_python_package(lwq_ops, models, tmp_path):
    """The CLI rounds as lwq.quantize_linear(fp16_scales=True) does: the same codes, scales and zero points."""
    from lwq.modules import quantize_linear
    weights = read_tensors(models / "scripted.safetensors")
    for sym in (True, False):
        q = tmp_path / f"q{sym}.pt"
        ok(lwq("quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors",
               "--algo", "rtn", "--dtype", "int4", "--group-size", "32", "--sym" if sym else "--asym",
               "--scale-dtype", "fp16", "--out", q, "--quiet"))
        modules = dict(torch.jit.load(str(q)).named_modules())
        for name in LINEARS:
            w = weights[f"{name}.weight"]
            linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            linear.weight.data.copy_(w)
            want = torch.ops.lwq.unpack_weight(quantize_linear(linear, "int4", 32, sym, fp16_scales=True).packed)
            got = torch.ops.lwq.unpack_weight(modules[name].packed)
            for u, v in zip(got, want):
                assert (u is None and v is None) or torch.equal(u, v), name
            assert torch.equal(got[1], got[1].half().float())


def test_float16_scales_are_refused_for_w8a8(models, calibration, tmp_path):
    fails(lwq("quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors",
              "--algo", "w8a8", "--scale-dtype", "fp16", "--calib-tensors", calibration, "--out", tmp_path / "q.pt"),
          "float16 scales apply to the weight-only algorithms")
