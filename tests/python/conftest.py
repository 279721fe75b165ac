"""Shared fixtures: where the build is, the loaded operator library, and running the lwq tool.

The package under test is this checkout's python/lwq (put first on sys.path here); the tool and the libraries are
those of $LWQ_BUILD_DIR (set by ctest), else <checkout>/build."""
import os
import pathlib
import sys

import pytest
import torch

SOURCE_DIR = pathlib.Path(os.environ.get("LWQ_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
BUILD_DIR = pathlib.Path(os.environ.get("LWQ_BUILD_DIR", SOURCE_DIR / "build"))
OPS_LIB = BUILD_DIR / "lib" / "liblwq_ops.so"
CORE_LIB = BUILD_DIR / "lib" / "liblwq.so"
SHARED_DATA = SOURCE_DIR.parent / "shared" / "data"
# The real material (../shared/data/README.md): a trained Llama, its tokenizer, llama2.c's greedy output, text.
STORIES = SHARED_DATA / "stories260K.bin"
TOKENIZER = SHARED_DATA / "tok512.bin"
GREEDY = SHARED_DATA / "stories260K.greedy.txt"
TEXT = SHARED_DATA / "tinystories_val.txt"
needs_stories = pytest.mark.skipif(not STORIES.exists(),
                                   reason=f"real test material absent: {STORIES} not found (see ../shared/data)")
PYTHON_DIR = SOURCE_DIR / "python"

sys.path.insert(0, str(PYTHON_DIR))
from lwq import tool  # noqa: E402

LWQ = tool.tool_path(BUILD_DIR)


def lwq(*args, timeout=600, env=None):
    """Runs the lwq tool with `args` (converted with str); the caller checks the result (ok, fails)."""
    assert LWQ.exists(), f"{LWQ} is missing: build first (scripts/test.sh)"
    return tool.run(args, exe=LWQ, check=False, timeout=timeout, env=env)


def ok(result):
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result


def fails(result, *needles):
    """A refusal: exit status 1 and each needle in stderr."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.fixture(scope="session")
def lwq_ops():
    """torch.ops.lwq with liblwq_ops.so loaded."""
    assert OPS_LIB.exists(), f"{OPS_LIB} is missing: build first (scripts/test.sh)"
    torch.ops.load_library(str(OPS_LIB))
    return torch.ops.lwq


@pytest.fixture(scope="session")
def lwq_core(lwq_ops):
    """torch.ops.lwq with the core library (algorithm ops) loaded as well."""
    assert CORE_LIB.exists(), f"{CORE_LIB} is missing: build first (scripts/test.sh)"
    torch.ops.load_library(str(CORE_LIB))
    return torch.ops.lwq
