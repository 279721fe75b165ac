"""The Python package python/lwq: finding the libraries, quantizing nn.Linear layers in place, TorchScript round trip,
the data-only safetensors export read back without TorchScript, and the examples/python script."""
import os
import subprocess
import sys

import pytest
import torch

import lwq
from conftest import LWQ, OPS_LIB, PYTHON_DIR, SOURCE_DIR, ok
from conftest import lwq as run_lwq
from fixtures import generate
from fixtures import make_test_models as mtm
from lwq import _library, tool


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return generate("make_test_models.py", tmp_path_factory.mktemp("models"), 11)


def block_model(models):
    model = mtm.BlockModel(mtm.SCRIPTED_DIM, mtm.SCRIPTED_HIDDEN, mtm.SCRIPTED_BLOCKS).eval()
    model.load_state_dict(lwq.read_safetensors(models / "scripted.safetensors")[0])
    return model


def rel_error(y, ref):
    return ((y - ref).norm() / ref.norm()).item()


def test_library_search_order(tmp_path):
    lib_dir, build, pkg = tmp_path / "libs", tmp_path / "build", tmp_path / "prefix" / "lib" / "python3" / "lwq"
    pkg.mkdir(parents=True)
    env = {"LWQ_LIBRARY_DIR": str(lib_dir), "LWQ_BUILD_DIR": str(build)}
    assert _library.candidates("liblwq_ops.so", env, pkg) == [
        lib_dir / "liblwq_ops.so", build / "lib" / "liblwq_ops.so", pkg.parents[1] / "build" / "lib" / "liblwq_ops.so"]
    # Installed: CMake records where the libraries are, relative to the package.
    (pkg / "_install_layout.py").write_text('LIBRARY_DIR = "../.."\n')
    installed = tmp_path / "prefix" / "lib" / "liblwq_ops.so"
    assert _library.candidates("liblwq_ops.so", {}, pkg)[0] == installed
    with pytest.raises(FileNotFoundError, match="liblwq_ops.so not found; looked at: .*prefix/lib/liblwq_ops.so"):
        _library.find_library("liblwq_ops.so", {}, pkg)
    installed.write_bytes(b"")
    assert _library.find_library("liblwq_ops.so", {}, pkg) == installed
    (build / "lib").mkdir(parents=True)
    (build / "lib" / "liblwq_ops.so").write_bytes(b"")
    assert _library.find_library("liblwq_ops.so", env, pkg) == build / "lib" / "liblwq_ops.so"


def test_tool_is_found_and_its_failures_raise_with_stderr(tmp_path):
    assert tool.build_dir({"LWQ_BUILD_DIR": str(tmp_path)}) == tmp_path
    assert tool.build_dir({}).resolve() == (PYTHON_DIR / ".." / "build").resolve()  # this checkout's build/
    assert tool.tool_path(tmp_path) == tmp_path / "bin" / "lwq"
    assert "usage: lwq" in tool.run(["--help"], exe=LWQ).stdout
    with pytest.raises(tool.ToolError, match=r"(?s)exit 1\): .*lwq frobnicate\n.*frobnicate") as e:
        tool.run(["frobnicate"], exe=LWQ)
    assert e.value.proc.returncode == 1
    assert tool.run(["frobnicate"], exe=LWQ, check=False).returncode == 1


def test_finds_this_build():
    assert lwq.find_library().resolve() == OPS_LIB.resolve()
    lwq.load_library(core=True)
    lwq.load_library(core=True)  # a second call registers nothing again
    assert hasattr(torch.ops.lwq, "rtn_quantize")


def test_quantize_in_place_runs_and_scripts(models, tmp_path):
    model = block_model(models)
    x = torch.load(models / "scripted_reference.pt")["x"]
    with torch.no_grad():
        ref = model(x)
    names = lwq.quantize_(model, dtype="int8", group_size=32)
    assert names == [f"layers.{i}.{p}" for i in range(3) for p in ("up", "gate", "down")]
    assert type(model.lm_head) is torch.nn.Linear, "the output head stays float by default"
    assert isinstance(model.layers[0].up, lwq.QuantLinear) and "int8" in repr(model.layers[0].up)
    with torch.no_grad():
        y = model(x)
    assert 0 < rel_error(y, ref) < 0.01
    # The same packed weight through the op directly.
    up = model.layers[1].up
    h = torch.randn(3, mtm.SCRIPTED_DIM)
    assert torch.equal(up(h), torch.ops.lwq.woq_linear(h, up.packed, up.bias))
    # TorchScript: save, then load in a fresh interpreter through the package.
    path = tmp_path / "q.pt"
    torch.jit.script(model).save(str(path))
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import lwq; "
            "m = lwq.load(sys.argv[2]); torch.save(m(torch.load(sys.argv[3])), sys.argv[4])")
    subprocess.run([sys.executable, "-c", code, str(PYTHON_DIR), str(path), str(tmp_path / "x.pt"),
                    str(tmp_path / "y.pt")], check=True, env={**os.environ, "LWQ_BUILD_DIR": str(OPS_LIB.parents[1])})
    assert torch.equal(torch.load(tmp_path / "y.pt"), y)


def test_compute_int8_calls_woq_linear_a8_and_scripts(models, tmp_path):
    model, exact = block_model(models), block_model(models)
    x = torch.load(models / "scripted_reference.pt")["x"]
    with torch.no_grad():
        ref = model(x)
    lwq.quantize_(exact, dtype="int4", group_size=32)
    lwq.quantize_(model, dtype="int4", group_size=32, compute="int8")
    up = model.layers[0].up
    assert up.int8_activations and "compute=int8" in repr(up)
    h = torch.randn(3, mtm.SCRIPTED_DIM)
    assert torch.equal(up(h), torch.ops.lwq.woq_linear_a8(h, up.packed, up.bias))
    with torch.no_grad():
        y, y_exact = model(x), exact(x)
    assert rel_error(y, ref) < 0.25 and rel_error(y, y_exact) < 0.05
    scripted = torch.jit.script(model)
    assert torch.equal(scripted(x), y)
    path = tmp_path / "q8.pt"
    scripted.save(str(path))
    assert torch.equal(torch.jit.load(str(path))(x), y)


def test_compute_int8_refuses_other_dtypes(models):
    with pytest.raises(ValueError, match="nf4"):
        lwq.quantize_(block_model(models), dtype="nf4", group_size=32, compute="int8")
    with pytest.raises(ValueError, match="compute must be"):
        lwq.quantize_(block_model(models), dtype="int4", compute="int4")


def test_quantize_refuses_a_scriptmodule(models):
    # Its linears are RecursiveScriptModules, not torch.nn.Linear: it used to return [] and change nothing.
    scripted = torch.jit.script(block_model(models))
    with pytest.raises(TypeError, match="TorchScript RecursiveScriptModule"):
        lwq.quantize_(scripted, dtype="int4", group_size=32)


def test_exclude_and_asym(models):
    model = block_model(models)
    names = lwq.quantize_(model, dtype="int4", group_size=16, sym=False, exclude=[r"\.down$"])
    assert len(names) == 7 and "lm_head" in names and not any(n.endswith("down") for n in names)
    assert not model.layers[0].up.packed.sym() and model.layers[0].gate.bias is None


def test_fp16_scales_export_to_gptq_exactly(models, tmp_path):
    model = block_model(models)
    x = torch.load(models / "scripted_reference.pt")["x"]
    with torch.no_grad():
        ref = model(x)
    plain = block_model(models)
    lwq.quantize_(plain, dtype="int4", group_size=16)
    lwq.quantize_(model, dtype="int4", group_size=16, fp16_scales=True)
    for m in model.modules():
        if isinstance(m, lwq.QuantLinear):
            scales = torch.ops.lwq.unpack_weight(m.packed)[1]
            assert torch.equal(scales.half().float(), scales)
    with torch.no_grad():
        y, y_plain = model(x), plain(x)
    assert abs(rel_error(y, ref) - rel_error(y_plain, ref)) < 0.01  # as accurate as with fp32 scales
    # No --round-scales needed: the GPTQ checkpoint holds these weights exactly, and imports back to them.
    q = tmp_path / "q.pt"
    torch.jit.script(model).save(str(q))
    for args in (["export", "--format", "gptq", q, tmp_path / "gptq"],
                 ["import", "--format", "gptq", tmp_path / "gptq", "--model", models / "scripted.pt", "--out",
                  tmp_path / "q2.pt"]):
        ok(run_lwq(*args))
    with torch.no_grad():
        assert torch.equal(lwq.load(tmp_path / "q2.pt")(x), y)
    with pytest.raises(ValueError, match="integer dtypes"):
        lwq.quantize_linear(torch.nn.Linear(32, 8), dtype="nf4", group_size=16, fp16_scales=True)


def test_safetensors_export_loads_without_torchscript(models, tmp_path):
    q = tmp_path / "q.pt"
    ok(run_lwq("quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors", "--algo",
               "rtn", "--dtype", "int4", "--group-size", "16", "--asym", "--out", q, "--quiet"))
    plain = tmp_path / "q.safetensors"
    ok(run_lwq("export", "--format", "safetensors", q, plain))
    packed, tensors = lwq.load_packed_safetensors(plain)
    assert sorted(packed) == sorted(f"layers.{i}.{p}" for i in range(3) for p in ("up", "gate", "down"))
    assert packed["layers.2.down"].dtype() == "int4" and not packed["layers.2.down"].sym()
    # An eager model (no archive executed) filled from the file computes what the TorchScript archive computes.
    model = mtm.BlockModel(mtm.SCRIPTED_DIM, mtm.SCRIPTED_HIDDEN, mtm.SCRIPTED_BLOCKS).eval()
    lwq.load_into(model, plain)
    x = torch.load(models / "scripted_reference.pt")["x"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), lwq.load(q)(x), rtol=1e-6, atol=1e-6)
    # The same into a model whose tensors are on the meta device (no memory for its weights): nothing stays empty.
    empty = mtm.BlockModel(mtm.SCRIPTED_DIM, mtm.SCRIPTED_HIDDEN, mtm.SCRIPTED_BLOCKS).to("meta").eval()
    assert all(p.is_meta for p in empty.parameters())
    lwq.load_into(empty, plain)
    assert not [n for n, t in [*empty.named_parameters(), *empty.named_buffers()] if t.is_meta]
    with torch.no_grad():
        torch.testing.assert_close(empty(x), lwq.load(q)(x), rtol=1e-6, atol=1e-6)
    # A file whose shapes do not fit the model is refused, naming the layer.
    small = mtm.BlockModel(mtm.SCRIPTED_DIM, 64, mtm.SCRIPTED_BLOCKS)
    with pytest.raises(ValueError, match=r"layer 'layers.0.down' is \[48, 80\] in the file but \[48, 64\]"):
        lwq.load_into(small, plain)
    with pytest.raises(ValueError, match="not an lwq safetensors export"):
        lwq.load_packed_safetensors(models / "scripted.safetensors")


def test_python_example_runs():
    result = subprocess.run([sys.executable, str(SOURCE_DIR / "examples" / "python" / "quantize_and_run.py")],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "LWQ_BUILD_DIR": str(OPS_LIB.parents[1])})
    assert result.returncode == 0, result.stderr
    assert "relative error" in result.stdout and "reloaded output identical: True" in result.stdout
