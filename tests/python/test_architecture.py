"""The arrows that must never exist (docs/architecture.md), checked on the includes and imports of the tree."""
import pathlib
import re

from conftest import SOURCE_DIR

INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)

# Part of the tree -> include prefixes it must never use, and why.
FORBIDDEN = {
    "torch_ops": (["lwq/"], "the operator library knows no algorithm, I/O or pipeline"),
    "torch_ops/kernels": (["torch/", "ATen/", "c10/", "lwq/"], "kernels are torch-free raw-pointer code"),
    "src/algorithms": (["lwq/io/", "lwq/model/", "lwq/pipeline/", "lwq/text/", "lwq/interop/"],
                       "algorithms touch tensors only"),
    "src/observers": (["lwq/io/", "lwq/model/", "lwq/pipeline/", "lwq/text/", "lwq/interop/"],
                      "observers touch tensors only"),
    "src/io": (["lwq/model/", "lwq/pipeline/", "lwq/text/", "lwq/interop/"], "I/O is the bottom of the core"),
    "src/model": (["lwq/pipeline/", "lwq/text/", "lwq/interop/"], "graph surgery knows no driver"),
    "src/text": (["lwq/pipeline/", "lwq/interop/"], "the language-model runtime does not depend on quantization"),
    "src/interop": (["lwq/pipeline/", "lwq/text/"], "checkpoint formats do not run the pipeline"),
    "src/pipeline": (["lwq/interop/"], "the quantization driver does not know checkpoint formats"),
    "include/lwq": (["../src", "src/"], "public headers do not reach into the sources"),
}


def includes(part):
    root = SOURCE_DIR / part
    files = [p for p in root.rglob("*") if p.suffix in (".h", ".cpp")]
    if part == "torch_ops":  # kernels/ has its own, stricter rule
        files = [p for p in files if "kernels" not in p.relative_to(root).parts]
    for path in files:
        for name in INCLUDE.findall(path.read_text()):
            yield path.relative_to(SOURCE_DIR), name


def test_no_forbidden_include():
    wrong = []
    for part, (prefixes, why) in FORBIDDEN.items():
        for path, name in includes(part):
            if any(name.startswith(p) for p in prefixes):
                wrong.append(f"{path}: #include {name} ({why})")
    assert not wrong, "\n".join(wrong)


def test_nothing_includes_the_cli():
    wrong = [f"{p}: {n}" for part in ("src", "include", "torch_ops") for p, n in includes(part)
             if "cli/" in n and not str(p).startswith("src/cli")]
    assert not wrong, wrong


def test_python_package_and_tests_do_not_import_scripts():
    # The product is python/lwq; scripts/ holds demos and benchmarks that use it, never the other way round.
    pattern = re.compile(r"sys\.path\.(insert|append)\([^)]*scripts|from scripts|import scripts")
    wrong = [str(p.relative_to(SOURCE_DIR)) for d in ("python", "tests") for p in (SOURCE_DIR / d).rglob("*.py")
             if p.name != "test_architecture.py" and pattern.search(p.read_text())]
    assert not wrong, wrong


def test_the_rules_see_the_tree():
    # A rule over a folder that does not exist (a rename) would pass without checking anything.
    for part in FORBIDDEN:
        assert (SOURCE_DIR / part).is_dir(), part
        assert any(True for _ in includes(part)), f"{part}: no includes found"
