"""Outputs never destroy inputs or finished work: the output path is checked by file identity against every file an
input stands for, before any work; the resume state survives a failed final write (a full disk) and is locked
against a second run; files in the way are refused, never deleted; JSON nested too deep is refused, not a crash."""
import fcntl
import json
import os
import shutil
import subprocess

import pytest

from conftest import LWQ, fails, lwq, ok
from fixtures import generate
from lwq.safetensors import read_safetensors


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    assert LWQ.exists(), f"{LWQ} is missing: build first"
    return generate("make_test_models.py", tmp_path_factory.mktemp("models"), 7)


def quantize(models, weights, out, *options):
    return lwq("quantize", "--model", models / "scripted.pt", "--weights", weights, "--algo", "rtn",
               "--group-size", "16", "--out", out, "--quiet", *options)


def weights_dir(models, tmp_path):
    """A Hugging Face-style directory: one shard, an index, a config and a tokenizer file."""
    d = tmp_path / "weights"
    d.mkdir()
    shutil.copy(models / "scripted.safetensors", d / "model-00001-of-00001.safetensors")
    names = read_safetensors(models / "scripted.safetensors")[0].keys()
    index = {"weight_map": {n: "model-00001-of-00001.safetensors" for n in names}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    (d / "config.json").write_text("{}")
    (d / "tokenizer.model").write_bytes(b"not read by quantize, but an input all the same")
    return d


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_output_over_any_file_of_a_weights_directory_is_refused(models, tmp_path):
    d = weights_dir(models, tmp_path)
    before = snapshot(d)
    for name in before:
        fails(quantize(models, d, d / name), "is an input", "--weights")
    # Other spellings of the same files: a path through "..", a symbolic link, a hard link.
    fails(quantize(models, d, d / ".." / d.name / "config.json"), "is an input")
    (tmp_path / "link.pt").symlink_to(d / "model-00001-of-00001.safetensors")
    fails(quantize(models, d, tmp_path / "link.pt"), "is an input")
    os.link(d / "config.json", tmp_path / "hard.pt")
    fails(quantize(models, d, tmp_path / "hard.pt"), "is an input")
    fails(quantize(models, d, tmp_path / "q.pt", "--report", d / "config.json"), "--report", "is an input")
    assert snapshot(d) == before
    ok(quantize(models, d, tmp_path / "q.pt"))  # a new file next to the inputs is fine


def test_import_over_its_checkpoint_is_refused(models, tmp_path):
    q = tmp_path / "q.pt"
    ok(quantize(models, models / "scripted.safetensors", q, "--dtype", "int4"))
    ckpt = tmp_path / "gptq"
    ok(lwq("export", "--format", "gptq", "--round-scales", q, ckpt))
    before = snapshot(ckpt)
    for name in before:
        fails(lwq("import", "--format", "gptq", ckpt, "--model", models / "scripted.pt", "--out", ckpt / name),
              "is an input")
    fails(lwq("import", "--format", "gptq", ckpt, "--model", models / "scripted.pt", "--out",
              models / "scripted.pt"), "is an input")
    assert snapshot(ckpt) == before
    # export: the output (a file, or a directory's files) may not be the input archive.
    fails(lwq("export", "--format", "safetensors", q, q), "is an input")
    same_dir = tmp_path / "same"
    same_dir.mkdir()
    os.link(q, same_dir / "model.safetensors")
    fails(lwq("export", "--format", "gptq", q, same_dir), "is an input")
    assert (same_dir / "model.safetensors").read_bytes() == q.read_bytes()


def test_output_path_is_checked_before_any_work(models, tmp_path):
    w = models / "scripted.safetensors"
    (tmp_path / "adir").mkdir()
    fails(quantize(models, w, tmp_path / "adir"), "is a directory")
    fails(quantize(models, w, tmp_path / "missing" / "q.pt"), "does not exist")
    (tmp_path / "afile").write_text("x")
    fails(quantize(models, w, tmp_path / "afile" / "q.pt"), "is not a directory")
    fails(lwq("import", "--format", "safetensors", w, "--model", models / "scripted.pt", "--out", tmp_path / "adir"),
          "is a directory")
    fails(lwq("export", "--format", "gptq", models / "scripted.pt", tmp_path / "afile"), "not a directory")
    # Nothing was started: no resume state, no temporary.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]
    assert list((tmp_path / "adir").iterdir()) == []


def test_files_in_the_resume_directory_are_not_deleted(models, tmp_path):
    out = tmp_path / "q.pt"
    state = tmp_path / "q.pt.lwq-resume"
    state.mkdir()
    (state / "notes.txt").write_text("mine")
    fails(quantize(models, models / "scripted.safetensors", out), "notes.txt", "not lwq resume state")
    assert (state / "notes.txt").read_text() == "mine"
    shutil.rmtree(state)
    state.write_text("a file where the resume state goes")
    fails(quantize(models, models / "scripted.safetensors", out), "not a directory")
    assert state.read_text() == "a file where the resume state goes"
    assert not out.exists()


def test_a_second_run_on_the_same_output_is_refused(models, tmp_path):
    out = tmp_path / "q.pt"
    state = tmp_path / "q.pt.lwq-resume"
    state.mkdir()
    fd = os.open(state, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running lwq holds it
        fails(quantize(models, models / "scripted.safetensors", out), "another lwq run is writing")
    finally:
        os.close(fd)
    assert not out.exists()
    ok(quantize(models, models / "scripted.safetensors", out))  # free again
    assert not state.exists()


def test_a_killed_writes_temporary_is_removed_by_the_next_run(models, tmp_path):
    """SIGKILL (or the OOM killer) leaves the archive writer's temporary OUT.tmp.XXXXXX: nothing runs then. The next
    command writing OUT removes it before its work, and says so; a temporary a live writer holds (flock) stays."""
    out = tmp_path / "q.pt"
    stale, live = tmp_path / "q.pt.tmp.Ab12Cd", tmp_path / "q.pt.tmp.Zz99Yy"
    stale.write_bytes(b"x" * (1 << 20))
    live.write_bytes(b"being written")
    for path in (stale, live):
        os.utime(path, (1e9, 1e9))  # old: temporaries younger than 2 s are left alone
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a writer that is still running holds it
        result = ok(quantize(models, models / "scripted.safetensors", out))
    finally:
        os.close(fd)
    assert f"removed {stale} (1048576 bytes), the temporary of an earlier write of {out} that was killed" in \
        result.stderr, result.stderr
    assert not stale.exists() and live.exists() and out.exists()


def _mount_tmpfs(path, size):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a full disk)")
    path.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


def test_a_full_disk_keeps_the_finished_units(models, tmp_path):
    """The disk fills up at each point of a run in turn (the resume state, the spill file, the final archive): every
    failure names the path, leaves no output and no temporary, keeps the finished units, and --resume then gives
    the uninterrupted run's bytes."""
    w = models / "scripted.safetensors"
    reference = tmp_path / "reference.pt"
    ok(quantize(models, w, reference))
    units = len([n for n in read_safetensors(w)[0] if n.endswith(("up.weight", "gate.weight", "down.weight"))])
    disk = tmp_path / "disk"
    out, state = disk / "q.pt", disk / "q.pt.lwq-resume"
    _mount_tmpfs(disk, "64m")
    page = 4096
    failed_at = []  # finished units at each failure
    try:
        for pages in range(8, 96, 2):
            subprocess.run(["mount", "-o", f"remount,size={pages * page}", str(disk)], check=True)
            full = quantize(models, w, out)
            if full.returncode == 0:
                break  # room enough from here on
            fails(full, str(disk))
            assert not out.exists() and [p.name for p in disk.iterdir() if ".tmp." in p.name] == []
            done = json.loads((state / "state.json").read_text())["done"] if (state / "state.json").exists() else 0
            failed_at.append(done)
            if done == 0:
                continue
            assert f"the resume state of {done} finished units is kept in {state}" in full.stderr, full.stderr
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
            resumed = ok(lwq("quantize", "--model", models / "scripted.pt", "--weights", w, "--algo", "rtn",
                             "--group-size", "16", "--out", out, "--resume"))
            assert f"resuming after {done} finished units" in resumed.stderr
            assert out.read_bytes() == reference.read_bytes()
            assert not state.exists()
            out.unlink()
        else:
            pytest.fail(f"still failing with {pages} pages")
        # Some runs failed while recording units, at least one at the final write (every unit done).
        assert any(0 < d < units for d in failed_at) and units in failed_at, failed_at
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_gptq_export_stopped_halfway_is_never_read_with_an_old_config(models, tmp_path):
    """A GPTQ export replaces two files; the disk fills up while the new weights are written over an earlier export
    of other bits: the old weights stay, the old quantize_config.json is gone, and import refuses the directory
    instead of reading int8 weights as int4 ones."""
    q4, q8 = tmp_path / "q4.pt", tmp_path / "q8.pt"
    for q, dtype in ((q4, "int4"), (q8, "int8")):
        ok(lwq("quantize", "--model", models / "scripted.pt", "--weights", models / "scripted.safetensors", "--algo",
               "rtn", "--dtype", dtype, "--group-size", "16", "--scale-dtype", "fp16", "--out", q, "--quiet"))
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "64m")
    out = disk / "gptq"
    try:
        ok(lwq("export", "--format", "gptq", q4, out))
        old_weights = (out / "model.safetensors").read_bytes()
        used = sum(p.stat().st_size for p in out.iterdir())
        subprocess.run(["mount", "-o", f"remount,size={used + 8192}", str(disk)], check=True)
        fails(lwq("export", "--format", "gptq", q8, out), "No space left on device")
        assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
        assert (out / "model.safetensors").read_bytes() == old_weights
        fails(lwq("import", "--format", "gptq", out, "--model", models / "scripted.pt", "--out", tmp_path / "r.pt"),
              "no quantize_config.json")
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        ok(lwq("export", "--format", "gptq", q8, out))  # room again: a complete export
        assert json.loads((out / "quantize_config.json").read_text())["bits"] == 8
    finally:
        subprocess.run(["umount", str(disk)], check=False)


DEEP = 100_000


def test_json_nested_deep_is_refused_not_a_crash(models, tmp_path):
    # A safetensors header with a deep __metadata__ value.
    good = (models / "scripted.safetensors").read_bytes()
    n = int.from_bytes(good[:8], "little")
    header = good[8:8 + n].decode().rstrip()
    assert header.endswith("}")
    deep_header = (header[:-1] + ',"__metadata__":{"x":' + "[" * DEEP + "]" * DEEP + "}}").encode()
    bad = tmp_path / "deep.safetensors"
    bad.write_bytes(len(deep_header).to_bytes(8, "little") + deep_header + good[8 + n:])
    fails(quantize(models, bad, tmp_path / "q.pt"), "deep.safetensors", "nested more than")
    # --config rules.
    rules = tmp_path / "rules.json"
    rules.write_text('{"layers": ' + "[" * DEEP + "]" * DEEP + "}")
    fails(quantize(models, models / "scripted.safetensors", tmp_path / "q.pt", "--config", rules),
          "rules.json", "nested more than")
    # A GPTQ checkpoint's quantize_config.json.
    q = tmp_path / "q4.pt"
    ok(quantize(models, models / "scripted.safetensors", q, "--dtype", "int4"))
    ckpt = tmp_path / "gptq"
    ok(lwq("export", "--format", "gptq", "--round-scales", q, ckpt))
    (ckpt / "quantize_config.json").write_text('{"bits": ' + "{\"a\":" * DEEP + "1" + "}" * DEEP + "}")
    fails(lwq("import", "--format", "gptq", ckpt, "--model", models / "scripted.pt", "--out", tmp_path / "i.pt"),
          "quantize_config.json", "nested more than")
