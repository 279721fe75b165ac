"""End to end: `lwq quantize` / `lwq inspect` on the models of fixtures/make_test_models.py, outputs loaded and run
in a fresh Python process (only liblwq_ops.so loaded, as a deployment would)."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import LWQ, OPS_LIB, SOURCE_DIR, fails, lwq
from fixtures import generate
from lwq.safetensors import read_safetensors, write_safetensors

# Relative L2 error of the model output against the fp32 reference (a zero model scores 1.0).
INT8_BUDGET = 0.01
INT4_BUDGET = 0.25  # measured about 0.15 (int4 sym uses 15 levels; 3 residual blocks compound)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    assert LWQ.exists(), f"{LWQ} is missing: build first"
    return generate("make_test_models.py", tmp_path_factory.mktemp("models"), 3)


def quantize(models, name, out, *options):
    weights = ["--weights", models / f"{name}.safetensors"] if name == "scripted" else []
    result = lwq("quantize", "--model", models / f"{name}.pt", *weights, "--algo", "rtn", "--out", out, "--quiet",
                 *options)
    assert result.returncode == 0, result.stderr
    return result


_RUN_FRESH = r"""
import json, sys, torch
torch.ops.load_library(sys.argv[1])
module = torch.jit.load(sys.argv[2])
ref = torch.load(sys.argv[3])
with torch.no_grad():
    y = module(ref["x"])
layers = {}
for name, m in module.named_modules():
    packed = getattr(m, "packed", None) if hasattr(m, "packed") else None
    if packed is not None or (hasattr(m, "weight") and name):
        layers[name] = {"packed": packed is not None,
                        "dtype": packed.dtype() if packed is not None else None,
                        "group_size": packed.group_size() if packed is not None else None,
                        "weight_numel": m.weight.numel() if hasattr(m, "weight") else None}
print(json.dumps({"rel_error": ((y - ref["y"]).norm() / ref["y"].norm()).item(), "layers": layers}))
"""


def run_fresh(model_path, reference):
    """Loads and runs the archive in a new interpreter that never saw the quantizer."""
    result = subprocess.run([sys.executable, "-c", _RUN_FRESH, str(OPS_LIB), str(model_path), str(reference)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", ["scripted", "traced"])
@pytest.mark.parametrize("dtype,group,budget", [("int8", "32", INT8_BUDGET), ("int4", "32", INT4_BUDGET)])
def test_quantized_model_runs_in_fresh_process_within_budget(models, tmp_path, name, dtype, group, budget):
    out = tmp_path / "q.pt"
    quantize(models, name, out, "--dtype", dtype, "--group-size", group)
    got = run_fresh(out, models / f"{name}_reference.pt")
    assert got["rel_error"] < budget, got
    assert got["rel_error"] > 1e-7, "a quantized model cannot be exact: is it still float?"
    packed = {k: v for k, v in got["layers"].items() if v["packed"]}
    expected = {f"layers.{i}.{p}" for i in range(3) for p in ("up", "gate", "down")} if name == "scripted" else \
        {"fc1", "fc2", "head"}
    assert set(packed) == expected
    for layer in packed.values():
        assert layer["dtype"] == dtype and layer["group_size"] == int(group)
        assert layer["weight_numel"] == 0, "a float copy of a quantized weight stayed in the archive"


def test_output_head_stays_float_by_default(models, tmp_path):
    out = tmp_path / "q.pt"
    quantize(models, "scripted", out, "--dtype", "int8")
    got = run_fresh(out, models / "scripted_reference.pt")
    assert not got["layers"]["lm_head"]["packed"]
    assert got["layers"]["lm_head"]["weight_numel"] == 48 * 48


def test_int4_archive_is_smaller_than_the_float_weights(models, tmp_path):
    out = tmp_path / "q.pt"
    quantize(models, "scripted", out, "--dtype", "int4", "--group-size", "32", "--no-default-exclude")
    float_bytes = (models / "scripted.safetensors").stat().st_size
    # 4-bit codes + fp32 scales per 32 weights ~ 0.19 of fp32, plus the code and pickles of the archive.
    assert out.stat().st_size < 0.5 * float_bytes, (out.stat().st_size, float_bytes)


def test_excluding_one_instance_of_a_shared_type(models, tmp_path):
    # layers.{0,1,2}.up share one TorchScript class type and forward graph; layers.1.up alone stays float.
    out = tmp_path / "q.pt"
    quantize(models, "scripted", out, "--dtype", "int8", "--group-size", "32", "--exclude", r"^layers\.1\.up$")
    got = run_fresh(out, models / "scripted_reference.pt")
    assert got["rel_error"] < INT8_BUDGET
    assert not got["layers"]["layers.1.up"]["packed"] and got["layers"]["layers.1.up"]["weight_numel"] == 80 * 48
    assert got["layers"]["layers.0.up"]["packed"] and got["layers"]["layers.2.up"]["packed"]
    assert got["layers"]["lm_head"]["packed"], "--exclude replaces the default exclusion"


def test_report_lists_layers_and_totals(models, tmp_path):
    out, report = tmp_path / "q.pt", tmp_path / "r.json"
    quantize(models, "scripted", out, "--dtype", "int4", "--group-size", "32", "--asym", "--report", report)
    r = json.loads(report.read_text())
    assert [l["name"] for l in r["layers"]][:3] == ["layers.0.up", "layers.0.gate", "layers.0.down"]
    assert len(r["layers"]) == 9
    first = r["layers"][0]
    assert first["shape"] == [80, 48] and first["dtype"] == "int4" and first["group_size"] == 32
    assert first["sym"] is False and 0 < first["weight_mse"] < 1e-2
    assert r["kept_float"] == [{"name": "lm_head", "shape": [48, 48], "reason": r"excluded by '(^|\.)(lm_head|output)$'"}]
    totals = r["totals"]
    assert totals["float_bytes"] == sum(l["float_bytes"] for l in r["layers"])
    assert 0 < totals["packed_bytes"] < totals["float_bytes"] / 4
    assert totals["peak_rss_bytes"] > 0 and totals["seconds"] > 0


def test_inspect_lists_float_and_quantized_layers(models, tmp_path):
    before = lwq("inspect", models / "scripted.pt")
    assert before.returncode == 0, before.stderr
    assert "layers.0.up" in before.stdout and "float meta" in before.stdout and "lm_head" in before.stdout
    out = tmp_path / "q.pt"
    quantize(models, "scripted", out, "--dtype", "int4", "--group-size", "32")
    after = lwq("inspect", out)
    assert after.returncode == 0, after.stderr
    linear_section = after.stdout.split("linear layers:\n", 1)[1]
    lines = {line.split()[0]: line for line in linear_section.splitlines() if line.startswith("  ")}
    assert len(lines) == 10
    assert "quantized int4 group 32" in lines["layers.2.down"]
    assert "float" in lines["lm_head"] and "quantized" not in lines["lm_head"]


def test_help_of_every_command():
    for args in (["--help"], ["quantize", "--help"], ["inspect", "--help"]):
        result = lwq(*args)
        assert result.returncode == 0 and "usage: lwq" in result.stdout, args


def test_docs_cli_page_is_the_help():
    """docs/cli.md holds the help of every command as the program prints it."""
    page = (SOURCE_DIR / "docs" / "cli.md").read_text()
    for command in ["", "quantize", "inspect", "export", "import", "eval", "generate", "tokenize"]:
        heading = f"## lwq {command}".rstrip() + "\n\n```\n"
        assert heading in page, heading
        documented = page.split(heading, 1)[1].split("```", 1)[0]
        result = lwq(*([command] if command else []), "--help")
        assert result.returncode == 0
        assert documented.strip() == result.stdout.strip(), f"docs/cli.md is out of date for `lwq {command}`"


def test_version_and_equals_syntax(models, tmp_path):
    result = lwq("--version")
    assert result.returncode == 0 and result.stdout.startswith("lwq ") and result.stdout.split()[1][0].isdigit()
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    quantize(models, "scripted", a, "--dtype", "int8", "--group-size", "-1", "--threads", "1")
    quantize(models, "scripted", b, "--dtype=int8", "--group-size=-1", "--threads=1")
    assert a.read_bytes() == b.read_bytes()


def test_config_files_apply_where_they_appear(models, tmp_path):
    """Each --config overrides the options before it; the options after it override the file."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"dtype": "int8", "sym": False}))
    b.write_text(json.dumps({"group_size": 16}))
    report = tmp_path / "r.json"

    def spec(*options):
        quantize(models, "scripted", tmp_path / "q.pt", "--report", report, *options)
        return json.loads(report.read_text())["spec"]

    assert spec("--dtype", "int3", "--config", a, "--config", b) == {"dtype": "int8", "group_size": 16, "sym": False}
    assert spec("--config", a, "--dtype", "int3", "--config", b, "--group-size", "32") == \
        {"dtype": "int3", "group_size": 32, "sym": False}
    assert spec("--config", a, "--sym") == {"dtype": "int8", "group_size": 128, "sym": True}


def test_inspect_json_gives_the_facts_of_the_text(models, tmp_path):
    out = tmp_path / "q.pt"
    quantize(models, "scripted", out, "--dtype", "int4", "--group-size", "32", "--asym")
    text = lwq("inspect", out)
    result = lwq("inspect", "--json", "--model", out)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["path"] == str(out)
    assert len(got["modules"]) == int(text.stdout.split(": ", 1)[1].split()[0])
    linears = {l["name"]: l for l in got["linears"]}
    assert len(linears) == 10
    down = linears["layers.2.down"]
    assert down["quantized"] and down["dtype"] == "int4" and down["group_size"] == 32 and down["sym"] is False
    assert f"packed {down['bytes']} bytes" in text.stdout
    assert linears["lm_head"]["quantized"] is False and "group_size" not in linears["lm_head"]
    assert f"totals: packed {got['totals']['packed_bytes']} bytes" in text.stdout


# Error cases: a message naming the culprit, exit status 1, and never a half-written output.

def test_missing_weights_file(models, tmp_path):
    missing = tmp_path / "nope.safetensors"
    fails(lwq("quantize", "--model", models / "scripted.pt", "--weights", missing, "--algo", "rtn",
                     "--out", tmp_path / "q.pt"), str(missing))
    assert not (tmp_path / "q.pt").exists()


def test_missing_tokenizer_and_calibration_text_are_named_as_such(models, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("Once upon a time.\n")
    base = ["quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors", "--algo",
            "gptq", "--out", tmp_path / "q.pt"]
    fails(lwq(*base, "--calib", text, "--tokenizer", tmp_path / "tok.bin"),
          f"tokenizer {tmp_path / 'tok.bin'} is neither a readable file nor a model directory")
    fails(lwq(*base, "--calib", tmp_path / "none.txt", "--tokenizer", text),
          f"calibration text {tmp_path / 'none.txt'} is not a readable file")


def test_meta_model_without_weights(models, tmp_path):
    fails(lwq("quantize", "--model", models / "scripted.pt", "--algo", "rtn", "--out", tmp_path / "q.pt"),
                 "layers.0.norm.weight", "--weights")


def test_missing_tensor_in_store_is_named(models, tmp_path):
    tensors = read_safetensors(models / "scripted.safetensors")[0]
    del tensors["layers.1.gate.weight"]
    weights = tmp_path / "w.safetensors"
    write_safetensors(weights, tensors)
    fails(lwq("quantize", "--model", models / "scripted.pt", "--weights", weights, "--algo", "rtn",
                     "--out", tmp_path / "q.pt"), "layers.1.gate.weight")
    assert not (tmp_path / "q.pt").exists()


def test_wrong_shape_in_store_is_named(models, tmp_path):
    tensors = read_safetensors(models / "scripted.safetensors")[0]
    tensors["layers.0.up.bias"] = torch.zeros(7)
    weights = tmp_path / "w.safetensors"
    write_safetensors(weights, tensors)
    fails(lwq("quantize", "--model", models / "scripted.pt", "--weights", weights, "--algo", "rtn",
                     "--out", tmp_path / "q.pt"), "layers.0.up.bias", "[7]")


def test_nan_weight_names_the_layer_and_leaves_output_untouched(models, tmp_path):
    tensors = read_safetensors(models / "scripted.safetensors")[0]
    tensors["layers.2.down.weight"][3, 5] = float("nan")
    weights = tmp_path / "w.safetensors"
    write_safetensors(weights, tensors)
    out = tmp_path / "q.pt"
    out.write_bytes(b"previous output")
    failed = lwq("quantize", "--model", models / "scripted.pt", "--weights", weights, "--algo", "rtn", "--out", out)
    fails(failed, "layers.2.down", "NaN")
    assert out.read_bytes() == b"previous output"
    # No temporary is left; the finished layers are kept (as after any failure) and the user is told.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("q.pt")) == ["q.pt", "q.pt.lwq-resume"]
    assert "finished units is kept in" in failed.stderr


def test_output_equal_to_an_input_is_refused(models, tmp_path):
    model_bytes = (models / "scripted.pt").read_bytes()
    for out in (models / "scripted.pt", models / "scripted.safetensors"):
        fails(lwq("quantize", "--model", models / "scripted.pt", "--weights",
                         models / "scripted.safetensors", "--algo", "rtn", "--out", out), "input")
    assert (models / "scripted.pt").read_bytes() == model_bytes


def test_already_quantized_model_is_refused(models, tmp_path):
    out = tmp_path / "q.pt"
    quantize(models, "traced", out, "--dtype", "int8")
    fails(lwq("quantize", "--model", out, "--algo", "rtn", "--out", tmp_path / "q2.pt"), "already")


def test_unsupported_algorithm_and_bad_options(models, tmp_path):
    base = ["quantize", "--model", models / "traced.pt", "--out", tmp_path / "q.pt"]
    fails(lwq(*base, "--algo", "gptq"), "gptq", "--calib-tensors")
    fails(lwq(*base, "--algo", "sparsegpt"), "sparsegpt", "rtn, gptq, awq, teq, w8a8")
    fails(lwq(*base, "--algo", "rtn", "--dtype", "int5"), "int5")
    fails(lwq(*base, "--algo", "rtn", "--group-size", "abc"), "--group-size")
    fails(lwq(*base, "--algo", "rtn", "--dtype", "nf4", "--asym"), "nf4")
    fails(lwq(*base, "--algo", "rtn", "--exclude", "("), "(")
    fails(lwq("inspect", tmp_path / "missing.pt"), "missing.pt")
    fails(lwq("frobnicate"), "frobnicate")


def test_usage_mistakes_name_the_option(models, tmp_path):
    base = ["quantize", "--model", models / "traced.pt", "--out", tmp_path / "q.pt", "--algo", "rtn"]
    fails(lwq(*base, "--grup-size", "32"), "unknown option '--grup-size'", "did you mean --group-size?")
    fails(lwq(*base, "--group-size=x"), "--group-size needs an integer, got 'x'")
    fails(lwq(*base, "--dtype"), "--dtype needs a value")
    fails(lwq(*base, "--sym", "--asym"), "--sym excludes --asym")
    fails(lwq(*base, "--exclude", "fc1", "--no-default-exclude"), "--exclude", "--no-default-exclude")
    fails(lwq(*base, "--threads", "0"), "lwq: error: quantize: --threads must be at least 1, got 0")
    fails(lwq(*base, "--dtype", "int5"), "int5", "int8, int4, int4_fullrange, int3, int2, nf4, fp4_e2m1")
    fails(lwq("quantiz"), "unknown command 'quantiz'", "did you mean quantize?")
    fails(lwq("inspect"), "--model is required")
    assert not (tmp_path / "q.pt").exists()


def test_compute_int8_installs_woq_linear_a8(models, tmp_path):
    """--compute int8: every quantized call is lwq::woq_linear_a8; the outputs stay within the int4 budget and
    close to the exact (fp32-compute) archive, which differs from it only in how x meets the codes."""
    exact, fast = tmp_path / "exact.pt", tmp_path / "fast.pt"
    quantize(models, "scripted", exact, "--dtype", "int4", "--group-size", "32")
    quantize(models, "scripted", fast, "--dtype", "int4", "--group-size", "32", "--compute", "int8",
             "--report", tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["compute"] == "int8"
    ref = models / "scripted_reference.pt"
    got_exact, got_fast = run_fresh(exact, ref), run_fresh(fast, ref)
    assert got_fast["rel_error"] < INT4_BUDGET, got_fast
    assert abs(got_fast["rel_error"] - got_exact["rel_error"]) < 0.02, (got_exact, got_fast)
    torch.ops.load_library(str(OPS_LIB))
    code_fast, code_exact = ("\n".join(m.code for m in torch.jit.load(str(path)).modules() if hasattr(m, "code"))
                             for path in (fast, exact))
    assert "woq_linear_a8" in code_fast and "woq_linear(" not in code_fast.replace("woq_linear_a8(", "")
    assert "woq_linear_a8" not in code_exact


def test_compute_int8_refuses_dtypes_and_algorithms_it_cannot_serve(models, tmp_path):
    out = tmp_path / "q.pt"
    result = lwq("quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors",
                 "--algo", "rtn", "--dtype", "nf4", "--compute", "int8", "--out", out)
    fails(result, "--compute int8", "nf4")
    assert not out.exists()
    result = lwq("quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors",
                 "--algo", "rtn", "--compute", "int4", "--out", out)
    fails(result, "unknown compute", "int4")
    assert not out.exists()
