"""Finding and loading liblwq_ops.so (the operators) and liblwq.so (the core library's algorithm ops)."""
import os
import pathlib
from typing import List, Mapping, Optional

import torch

OPS_LIBRARY = "liblwq_ops.so"
CORE_LIBRARY = "liblwq.so"
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def candidates(name: str, env: Optional[Mapping[str, str]] = None,
               package_dir: pathlib.Path = _PACKAGE_DIR) -> List[pathlib.Path]:
    """Where `name` is looked for, in order: $LWQ_LIBRARY_DIR, $LWQ_BUILD_DIR/lib, the library directory recorded at
    install time (_install_layout.py, relative to the package), and <checkout>/build/lib for python/lwq of a source
    checkout."""
    env = os.environ if env is None else env
    out = []
    if env.get("LWQ_LIBRARY_DIR"):
        out.append(pathlib.Path(env["LWQ_LIBRARY_DIR"]) / name)
    if env.get("LWQ_BUILD_DIR"):
        out.append(pathlib.Path(env["LWQ_BUILD_DIR"]) / "lib" / name)
    layout = package_dir / "_install_layout.py"
    if layout.exists():
        scope: dict = {}
        exec(compile(layout.read_text(), str(layout), "exec"), scope)  # one assignment written by CMake
        out.append((package_dir / scope["LIBRARY_DIR"]).resolve() / name)
    out.append(package_dir.parent.parent / "build" / "lib" / name)
    return out


def find_library(name: str = OPS_LIBRARY, env: Optional[Mapping[str, str]] = None,
                 package_dir: pathlib.Path = _PACKAGE_DIR) -> pathlib.Path:
    """The first existing candidate path of `name`; FileNotFoundError listing every place looked at otherwise."""
    tried = candidates(name, env, package_dir)
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} not found; looked at: {', '.join(map(str, tried))}. Build lwq (scripts/test.sh "
                            f"or cmake --build), install it (cmake --install build --prefix P), or set "
                            f"LWQ_LIBRARY_DIR to the directory that holds it")


def _registered(op: str) -> bool:
    try:
        getattr(torch.ops.lwq, op)
        return True
    except (AttributeError, RuntimeError):
        return False


def load_library(core: bool = False) -> None:
    """Loads liblwq_ops.so (and liblwq.so when `core`) unless their operators are registered already: a second copy
    of the library from another path would try to register the lwq namespace again and fail."""
    if not _registered("woq_linear"):
        torch.ops.load_library(str(find_library(OPS_LIBRARY)))
    if core and not _registered("rtn_quantize"):
        torch.ops.load_library(str(find_library(CORE_LIBRARY)))
