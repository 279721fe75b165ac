"""`lwq quantize` with the calibrated algorithms (gptq, awq, teq, w8a8), block by block, on the models of
fixtures/make_test_models.py. Outputs are loaded and run in a fresh interpreter (only liblwq_ops.so loaded).

The calibration and evaluation inputs share one distribution with correlated channels and a few outlier
channels (as LLM activations have): there GPTQ (which uses the correlations) and AWQ (which protects the
channels that matter) must beat plain RTN, and W8A8 with SmoothQuant must beat W8A8 without it."""
import json
import os
import signal

import pytest
import torch

from conftest import fails, lwq
from fixtures import make_test_models
from lwq.safetensors import read_safetensors, write_safetensors
from test_cli import models, run_fresh  # noqa: F401 (models is a fixture)

DIM = make_test_models.SCRIPTED_DIM


def structured_inputs(n, length, dim, seed):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g) * torch.logspace(0, -1.5, dim).unsqueeze(1)  # correlated channels
    x = torch.randn(n, length, dim, generator=torch.Generator().manual_seed(seed + 100)) @ mix
    x[..., :3] *= 8.0  # outlier channels
    return x


@pytest.fixture(scope="module")
def calibrated(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated")
    mix_seed = 11  # one distribution: the same mixing matrix for calibration and evaluation
    calib = structured_inputs(32, 16, DIM, mix_seed)
    write_safetensors(out / "calib.safetensors", {"inputs": calib})
    weights = read_safetensors(models / "scripted.safetensors")[0]
    model = make_test_models.BlockModel(DIM, make_test_models.SCRIPTED_HIDDEN, make_test_models.SCRIPTED_BLOCKS)
    model.load_state_dict(weights)
    # Evaluation rows: the same distribution, other samples.
    x = structured_inputs(40, 16, DIM, mix_seed)[32:]
    with torch.no_grad():
        torch.save({"x": x, "y": model(x)}, out / "reference.pt")
    return out


def quantize(models, calibrated, out, algo, *options, name="scripted"):
    weights = ["--weights", models / f"{name}.safetensors"] if name == "scripted" else []
    result = lwq("quantize", "--model", models / f"{name}.pt", *weights, "--algo", algo,
                 "--calib-tensors", calibrated / "calib.safetensors", "--out", out, "--quiet", *options)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def errors(models, calibrated, tmp_path_factory):
    """Relative output error of each configuration (int4 g32 sym unless stated)."""
    out = tmp_path_factory.mktemp("errors")
    runs = {
        "rtn": ("rtn",),
        "gptq": ("gptq", "--group-size", "32"),
        "awq": ("awq", "--group-size", "32"),
        "teq": ("teq", "--teq-steps", "200", "--group-size", "32"),
        "w8a8": ("w8a8", "--dtype", "int8", "--group-size", "-1"),
        "w8a8_smooth": ("w8a8", "--dtype", "int8", "--group-size", "-1", "--smoothquant", "0.5"),
    }
    result = {}
    for key, (algo, *options) in runs.items():
        path = out / f"{key}.pt"
        if algo == "rtn":
            r = lwq("quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors",
                    "--algo", "rtn", "--group-size", "32", "--out", path, "--quiet")
            assert r.returncode == 0, r.stderr
        else:
            quantize(models, calibrated, path, algo, *options,
                     "--report", out / f"{key}.json")
        result[key] = run_fresh(path, calibrated / "reference.pt")["rel_error"]
    result["dir"] = out
    return result


def test_gptq_and_awq_beat_rtn(errors):
    assert errors["gptq"] < 0.9 * errors["rtn"], errors
    assert errors["awq"] < 0.9 * errors["rtn"], errors


def test_teq_is_no_worse_than_rtn_on_its_calibration_data(errors):
    # TEQ keeps the best scales seen on the calibration rows, s = 1 (RTN) included: per layer it cannot lose
    # there. On held-out rows it may lose a little (measured 1.04x RTN here).
    report = json.loads((errors["dir"] / "teq.json").read_text())
    for layer in report["layers"]:
        assert layer["output_mse"] <= layer["rtn_output_mse"] * (1 + 1e-6), layer
    assert errors["teq"] <= 1.1 * errors["rtn"], errors


def test_w8a8_is_close_to_float_and_smoothquant_helps(errors):
    assert errors["w8a8"] < 0.05, errors
    assert errors["w8a8_smooth"] < errors["w8a8"], errors


def test_scales_are_folded_into_norms_and_producers(errors):
    for key in ["awq", "w8a8_smooth"]:
        report = json.loads((errors["dir"] / f"{key}.json").read_text())
        applied = {tuple(f["layers"]): f["applied"] for f in report["scale_folds"]}
        assert applied[("layers.0.gate", "layers.0.up")] == "norm layers.0.norm.weight", applied
        assert applied[("layers.0.down",)] == "linear layers.0.up", applied
        assert report["calibration"]["blocks"] == "layers" and report["calibration"]["block_count"] == 3


def test_report_has_calibration_errors(errors):
    report = json.loads((errors["dir"] / "gptq.json").read_text())
    assert len(report["layers"]) == 9
    for layer in report["layers"]:
        assert layer["algorithm"] == "gptq"
        assert 0 <= layer["output_mse"] <= layer["rtn_output_mse"], layer


@pytest.mark.parametrize("algo", ["rtn", "gptq"])
def test_layer_wise_equals_in_memory_bit_for_bit(models, calibrated, tmp_path, algo):
    paths = []
    for mode in [[], ["--no-layer-wise"], []]:
        path = tmp_path / f"q{len(paths)}.pt"
        quantize(models, calibrated, path, algo, "--group-size", "32", *mode)
        paths.append(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() == paths[2].read_bytes()  # and the same command gives the same bytes


def test_model_without_block_list_is_one_block(models, calibrated, tmp_path):
    calib = torch.randn(8, 4, make_test_models.TRACED_IN, generator=torch.Generator().manual_seed(5))
    write_safetensors(tmp_path / "calib.safetensors", {"inputs": calib})
    out = tmp_path / "q.pt"
    r = lwq("quantize", "--model", models / "traced.pt", "--algo", "gptq", "--calib-tensors",
            tmp_path / "calib.safetensors", "--group-size", "32", "--out", out, "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert "(whole model)" in r.stderr
    assert run_fresh(out, models / "traced_reference.pt")["rel_error"] < 0.25


def test_calibration_errors_are_named(models, calibrated, tmp_path):
    base = ["quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors",
            "--out", tmp_path / "q.pt"]
    fails(lwq(*base, "--algo", "gptq"), "--calib-tensors")
    fails(lwq(*base, "--algo", "gptq", "--calib-tensors", tmp_path / "none.safetensors"), "none.safetensors")
    write_safetensors(tmp_path / "other.safetensors", {"x": torch.zeros(2, 2)})
    fails(lwq(*base, "--algo", "awq", "--calib-tensors", tmp_path / "other.safetensors"), "other.safetensors",
          "input_ids")
    bad = structured_inputs(2, 4, DIM, 1)
    bad[1, 2, 5] = float("nan")
    write_safetensors(tmp_path / "nan.safetensors", {"inputs": bad})
    fails(lwq(*base, "--algo", "gptq", "--calib-tensors", tmp_path / "nan.safetensors"), "nan.safetensors")
    calib = ["--calib-tensors", calibrated / "calib.safetensors"]
    fails(lwq(*base, "--algo", "w8a8", "--group-size", "32", *calib), "--group-size 32", "one group per output channel")
    fails(lwq(*base, "--algo", "gptq", "--blocks", "stack", *calib), "stack")
    fails(lwq(*base, "--algo", "gptq", "--nsamples", "1000", *calib), "1000")
    assert not (tmp_path / "q.pt").exists()


def test_w8a8_implies_its_weight_scheme(models, calibrated, tmp_path):
    """--algo w8a8 alone is --dtype int8 --group-size -1 --sym (the same bytes); another scheme is refused, whether
    the command line or the --config file gives it."""
    implied, explicit = tmp_path / "implied.pt", tmp_path / "explicit.pt"
    quantize(models, calibrated, implied, "w8a8", "--report", tmp_path / "r.json")
    quantize(models, calibrated, explicit, "w8a8", "--dtype", "int8", "--group-size", "-1", "--sym")
    assert json.loads((tmp_path / "r.json").read_text())["spec"] == {"dtype": "int8", "group_size": -1, "sym": True}
    assert implied.read_bytes() == explicit.read_bytes()
    base = ["quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors",
            "--calib-tensors", calibrated / "calib.safetensors", "--out", tmp_path / "q.pt"]
    fails(lwq(*base, "--algo", "w8a8", "--dtype", "int4"), "--algo w8a8", "--dtype int4")
    fails(lwq(*base, "--algo", "w8a8", "--asym"), "--algo w8a8", "--asym")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"algorithm": "w8a8", "group_size": 64}))
    fails(lwq(*base, "--config", config), "--algo w8a8", '"group_size": 64', str(config))
    config.write_text(json.dumps({"algorithm": "w8a8"}))
    r = lwq(*base, "--config", config, "--quiet")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "q.pt").read_bytes() == explicit.read_bytes()


def test_options_of_another_algorithm_are_refused(models, calibrated, tmp_path):
    base = ["quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors",
            "--out", tmp_path / "q.pt"]
    calib = ["--calib-tensors", calibrated / "calib.safetensors"]
    fails(lwq(*base, "--algo", "rtn", "--act-order"), "--act-order applies to --algo gptq only", "rtn")
    fails(lwq(*base, "--algo", "rtn", "--smoothquant", "0.5"), "--smoothquant applies to --algo w8a8 only")
    fails(lwq(*base, "--algo", "awq", "--teq-steps", "5", *calib), "--teq-steps applies to --algo teq only", "awq")
    fails(lwq(*base, "--algo", "gptq", "--observer", "kl", *calib), "--observer applies to --algo w8a8 only")
    # The algorithm of the --config file counts, and a later --algo overrides it.
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"algorithm": "gptq"}))
    fails(lwq(*base, "--config", config, "--algo", "awq", "--act-order", *calib), "--act-order", "--algo awq")
    r = lwq(*base, "--algo", "rtn", *calib, "--quiet")
    assert r.returncode == 0 and "--calib-tensors is ignored" in r.stderr, r.stderr


def kill_and_resume(base, out, kill_after):
    """Runs `lwq base...`, SIGKILLed by itself after `kill_after` finished units, then resumes it."""
    env = dict(os.environ, LWQ_TEST_KILL_AFTER_UNITS=str(kill_after))
    killed = lwq(*base, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()  # nothing at the output path before the run completes
    state = json.loads((out.parent / (out.name + ".lwq-resume") / "state.json").read_text())
    assert state["done"] == kill_after
    resumed = lwq(*base, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after {kill_after} finished units" in resumed.stderr
    assert not (out.parent / (out.name + ".lwq-resume")).exists()  # the state goes once the output is written
    return out.read_bytes()


@pytest.mark.parametrize("algo,kill_after", [("gptq", 1), ("awq", 2), ("rtn", 4)])
def test_killed_run_resumes_to_the_same_bytes(models, calibrated, tmp_path, algo, kill_after):
    def command(out):
        return ["quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors",
                "--algo", algo, "--group-size", "32", "--calib-tensors", calibrated / "calib.safetensors",
                "--out", out]
    reference = tmp_path / "reference.pt"
    r = lwq(*command(reference))
    assert r.returncode == 0, r.stderr
    assert kill_and_resume(command(tmp_path / "q.pt"), tmp_path / "q.pt", kill_after) == reference.read_bytes()


def test_resume_refuses_the_state_of_another_command(models, calibrated, tmp_path):
    out = tmp_path / "q.pt"
    base = ["quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors",
            "--calib-tensors", calibrated / "calib.safetensors", "--out", out]
    lwq(*base, "--algo", "gptq", env=dict(os.environ, LWQ_TEST_KILL_AFTER_UNITS="1"))
    fails(lwq(*base, "--algo", "gptq", "--group-size", "64", "--resume"), "spec", "another run")
    # Without --resume the old state is discarded and the run starts afresh.
    r = lwq(*base, "--algo", "gptq", "--group-size", "64")
    assert r.returncode == 0, r.stderr


def test_config_rules_set_formats_per_layer(models, calibrated, tmp_path):
    config = tmp_path / "rules.json"
    config.write_text(json.dumps({
        "algorithm": "gptq", "dtype": "int4", "group_size": 32,
        "exclude": ["layers\\.2\\.down$", "lm_head"],
        "layers": [{"match": "\\.down$", "dtype": "int8", "group_size": -1, "algorithm": "rtn"},
                   {"match": "layers\\.1\\.", "sym": False}]}))
    out = tmp_path / "q.pt"
    r = lwq("quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors",
            "--config", config, "--calib-tensors", calibrated / "calib.safetensors", "--out", out,
            "--report", tmp_path / "r.json", "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    layers = {l["name"]: l for l in report["layers"]}
    assert "layers.2.down" not in layers and "layers.2.down" in {k["name"] for k in report["kept_float"]}
    assert (layers["layers.0.down"]["dtype"], layers["layers.0.down"]["group_size"]) == ("int8", -1)
    assert layers["layers.0.down"]["algorithm"] == "rtn" and layers["layers.0.up"]["algorithm"] == "gptq"
    assert layers["layers.1.up"]["sym"] is False and layers["layers.0.up"]["sym"] is True
    assert run_fresh(out, calibrated / "reference.pt")["rel_error"] < 0.1


def test_bad_config_is_named(models, calibrated, tmp_path):
    base = ["quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors",
            "--out", tmp_path / "q.pt", "--algo", "rtn", "--config"]
    for text, needle in [("{", "not valid JSON"), ('{"dtypes": "int4"}', "dtypes"),
                         ('{"layers": [{"dtype": "int8"}]}', "match"),
                         ('{"layers": [{"match": "(", "dtype": "int8"}]}', "regular expression"),
                         ('{"group_size": "big"}', "group_size"),
                         ('{"layers": [{"match": "up", "dtype": "int5"}]}', "layers.0.up")]:
        path = tmp_path / "c.json"
        path.write_text(text)
        fails(lwq(*base, path), needle)
    assert not (tmp_path / "q.pt").exists()


def test_offloaded_activations_give_the_same_bytes(models, calibrated, tmp_path):
    quantize(models, calibrated, tmp_path / "memory.pt", "awq", "--group-size", "32")
    offload = tmp_path / "offload"
    offload.mkdir()
    quantize(models, calibrated, tmp_path / "disk.pt", "awq", "--group-size", "32", "--offload-dir", offload)
    assert (tmp_path / "memory.pt").read_bytes() == (tmp_path / "disk.pt").read_bytes()
    assert list(offload.iterdir()) == []  # its files are removed at the end


def test_blocks_after_the_last_quantized_one_are_not_run(models, calibrated, tmp_path):
    """Quantizing only block 0 runs one block (not all of them) and gives block 0 the packed weights of a full run:
    its calibration inputs do not depend on the blocks after it. The other blocks stay float, with their values."""
    base = ["quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors", "--algo",
            "gptq", "--group-size", "32", "--calib-tensors", calibrated / "calib.safetensors"]
    rules = tmp_path / "first.json"
    rules.write_text(json.dumps({"include": ["^layers\\.0\\."]}))
    first = lwq(*base, "--config", rules, "--out", tmp_path / "first.pt", "--report", tmp_path / "first.json")
    assert first.returncode == 0, first.stderr
    assert "[block 1/1] layers.0" in first.stderr and "block 2/" not in first.stderr
    full = lwq(*base, "--out", tmp_path / "full.pt", "--quiet")
    assert full.returncode == 0, full.stderr
    for name in ("first", "full"):
        assert lwq("export", "--format", "safetensors", tmp_path / f"{name}.pt", "--out",
                   tmp_path / f"{name}.safetensors").returncode == 0
    a = read_safetensors(tmp_path / "first.safetensors")[0]
    b = read_safetensors(tmp_path / "full.safetensors")[0]
    block0 = [n for n in a if n.startswith("layers.0.")]
    assert any(n.endswith(".qweight") for n in block0)
    for n in block0:
        assert torch.equal(a[n], b[n]), n
    # A later block stays float, with the checkpoint's values.
    weights = read_safetensors(models / "scripted.safetensors")[0]
    later = [n for n in weights if n.startswith(f"layers.{make_test_models.SCRIPTED_BLOCKS - 1}.")]
    assert later and all(torch.equal(a[n], weights[n]) for n in later)
