"""Shared fixtures: where the build is, and the loaded operator library."""
import os
import pathlib

import pytest
import torch

SOURCE_DIR = pathlib.Path(os.environ.get("LWQ_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
BUILD_DIR = pathlib.Path(os.environ.get("LWQ_BUILD_DIR", SOURCE_DIR / "build"))
OPS_LIB = BUILD_DIR / "lib" / "liblwq_ops.so"
CORE_LIB = BUILD_DIR / "lib" / "liblwq.so"
SHARED_DATA = SOURCE_DIR.parent / "shared" / "data"


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
