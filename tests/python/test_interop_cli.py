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
    # NaN or Inf in a layer's float16 scales (a damaged or edited checkpoint): named, never packed.
    for value in (float("nan"), float("inf")):
        bad_scale = tmp_path / f"bad_scale_{value}"
        bad_scale.mkdir()
        damaged = dict(tensors_all := read_tensors(ckpt / "model.safetensors"))
        damaged["layers.1.gate.scales"] = tensors_all["layers.1.gate.scales"].clone()
        damaged["layers.1.gate.scales"][0, 5] = value
        write_sorted(bad_scale / "model.safetensors", damaged)
        (bad_scale / "quantize_config.json").write_text(json.dumps(cfg))
        fails(lwq("import", "--format", "gptq", bad_scale, "--model", models / "scripted.pt", "--out",
                  tmp_path / "q.pt"), "layer 'layers.1.gate'", "scales contains NaN or Inf")
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


DATA_EXPORT_CASES = {  # name: (model, algorithm options, what the layers' metadata must say)
    # traced.pt's fc1 reads the model's input: AWQ's and SmoothQuant's scales have no producer to fold into. (TEQ's
    # unfolded scales are the same attribute; on this model TEQ keeps scale 1, RTN, so it is not a case here.)
    "awq_input_scale": ("traced", ["--algo", "awq", "--group-size", "8"], {"fc1": {"input_scale": True}}),
    "w8a8_smoothquant": ("traced", ["--algo", "w8a8", "--smoothquant", "0.5"],
                         {"fc1": {"input_scale": True, "activation": None}}),
    "w8a8": ("scripted", ["--algo", "w8a8", "--observer", "kl"], {"layers.0.up": {"activation": None}}),
    "int8_activations": ("scripted", ["--algo", "rtn", "--dtype", "int4", "--group-size", "16", "--compute", "int8"],
                         {"layers.0.up": {"compute": "int8"}}),
}


@pytest.mark.parametrize("case", sorted(DATA_EXPORT_CASES))
def test_every_quantized_model_exports_as_data(lwq_ops, models, tmp_path, case):
    """Input scales, W8A8 activation parameters and int8 activations travel in the safetensors export: lwq import
    rebuilds the same archive's outputs bit for bit, and lwq.load_into an eager model computes them too. A GPTQ
    checkpoint cannot carry input scales or W8A8: refused, naming the layer and the format that can."""
    name, options, expected = DATA_EXPORT_CASES[case]
    dim = mtm.TRACED_IN if name == "traced" else mtm.SCRIPTED_DIM
    calib = tmp_path / "calib.safetensors"
    x_calib = torch.randn(8, 5, dim, generator=torch.Generator().manual_seed(3))
    x_calib[..., :2] *= 10.0  # outlier channels, so the scales are far from 1
    write_safetensors(calib, {"inputs": x_calib})
    weights = ["--weights", models / "scripted.safetensors"] if name == "scripted" else []
    q = tmp_path / "q.pt"
    calib_opt = [] if "rtn" in options else ["--calib-tensors", calib]
    # traced.pt's forward calls F.linear on head.weight, which an eager QuantLinear cannot stand in for.
    exclude = ["--exclude", "^head$"] if name == "traced" else []
    ok(lwq("quantize", "--model", models / f"{name}.pt", *weights, *options, *calib_opt, *exclude, "--out", q,
           "--quiet"))
    plain = tmp_path / "q.safetensors"
    ok(lwq("export", "--format", "safetensors", q, plain))
    header = json.loads(plain.read_bytes()[8:8 + int.from_bytes(plain.read_bytes()[:8], "little")])
    layers = json.loads(header["__metadata__"]["lwq_layers"])
    for layer, fields in expected.items():
        for key, value in fields.items():
            assert key in layers[layer], (layer, layers[layer])
            if value is not None:
                assert layers[layer][key] == value, (layer, layers[layer])
        if fields.get("input_scale"):
            assert header[layer + ".input_scale"]["shape"] == [layers[layer]["in_features"]]

    ok(lwq("import", "--format", "safetensors", plain, "--model", models / f"{name}.pt", "--out", tmp_path / "q2.pt"))
    x = torch.load(models / f"{name}_reference.pt")["x"]
    y = run(lwq_ops, q, x)
    assert torch.equal(run(lwq_ops, tmp_path / "q2.pt", x), y)
    # Exported again from the rebuilt archive: the same bytes.
    ok(lwq("export", "--format", "safetensors", tmp_path / "q2.pt", tmp_path / "again.safetensors"))
    assert (tmp_path / "again.safetensors").read_bytes() == plain.read_bytes()

    import lwq as lwq_package
    eager = (mtm.TracedMLP() if name == "traced" else
             mtm.BlockModel(mtm.SCRIPTED_DIM, mtm.SCRIPTED_HIDDEN, mtm.SCRIPTED_BLOCKS)).to("meta").eval()
    lwq_package.load_into(eager, plain)
    with torch.no_grad():
        torch.testing.assert_close(eager(x), y, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(torch.jit.script(eager)(x), y, rtol=1e-6, atol=1e-6)

    gptq = lwq("export", "--format", "gptq", "--round-scales", q, tmp_path / "gptq")
    if "activation" in next(iter(expected.values())):
        fails(gptq, "is static W8A8", "--format safetensors holds it")
    elif "input_scale" in next(iter(expected.values())):
        fails(gptq, "layer 'fc1'", "per-channel scale", "--format safetensors holds it")
    else:
        assert gptq.returncode == 0, gptq.stderr
        assert "ran with int8 activations" in gptq.stderr


def test_edited_data_exports_are_refused(lwq_ops, models, tmp_path):
    """A W8A8 export whose activation parameters or input scale were edited: refused, naming the layer."""
    calib = tmp_path / "calib.safetensors"
    write_safetensors(calib, {"inputs": torch.randn(8, 5, mtm.TRACED_IN, generator=torch.Generator().manual_seed(3))})
    q, plain = tmp_path / "q.pt", tmp_path / "q.safetensors"
    ok(lwq("quantize", "--model", models / "traced.pt", "--algo", "w8a8", "--smoothquant", "0.5", "--calib-tensors",
           calib, "--out", q, "--quiet"))
    ok(lwq("export", "--format", "safetensors", q, plain))
    tensors, meta = read_safetensors(plain)
    layers = json.loads(meta["lwq_layers"])

    def edited(tensors_, layers_):
        path = tmp_path / "edited.safetensors"
        write_safetensors(path, tensors_, {**meta, "lwq_layers": json.dumps(layers_)})
        return lwq("import", "--format", "safetensors", path, "--model", models / "traced.pt", "--out",
                   tmp_path / "out.pt")

    for field, value, message in [("scale", 0.0, "activation scale must be a positive finite float"),
                                  ("scale", 1e300, "activation scale must be a positive finite float"),
                                  ("zero_point", 300, "activation zero point must be in [0, 255]"),
                                  ("zero_point", 1.5, "expected an integer"),
                                  ("dtype", "int4", "activation dtype must be")]:
        bad = json.loads(json.dumps(layers))
        bad["fc1"]["activation"][field] = value
        fails(edited(tensors, bad), "layer 'fc1'", message)
    nan_scale = dict(tensors)
    nan_scale["fc1.input_scale"] = tensors["fc1.input_scale"].clone()
    nan_scale["fc1.input_scale"][3] = float("nan")
    fails(edited(nan_scale, layers), "'fc1.input_scale'", "NaN or Inf")
    no_flag = json.loads(json.dumps(layers))
    del no_flag["fc1"]["input_scale"]
    fails(edited(tensors, no_flag), "'fc1.input_scale'", "no \"input_scale\" in the metadata")
    assert not (tmp_path / "out.pt").exists()


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
