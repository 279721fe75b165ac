"""Running the `lwq` command-line tool of a build tree from Python (the demo, benchmark and accuracy scripts and the
tests): where the binary is, and one call that runs it and raises with its stderr when it fails."""
import os
import pathlib
import subprocess
from typing import Iterable, Mapping, Optional, Union

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
PathLike = Union[str, "os.PathLike[str]"]


class ToolError(RuntimeError):
    """A tool command that exited with a non-zero status; the message holds the command and its stderr."""

    def __init__(self, proc: subprocess.CompletedProcess):
        self.proc = proc
        super().__init__(f"command failed (exit {proc.returncode}): {' '.join(proc.args)}\n{proc.stderr}")


def build_dir(env: Optional[Mapping[str, str]] = None) -> pathlib.Path:
    """$LWQ_BUILD_DIR, else build/ of the source checkout this package lies in."""
    env = os.environ if env is None else env
    if env.get("LWQ_BUILD_DIR"):
        return pathlib.Path(env["LWQ_BUILD_DIR"])
    return _PACKAGE_DIR.parent.parent / "build"


def tool_path(build: Optional[PathLike] = None) -> pathlib.Path:
    """The lwq binary of a build directory (default: build_dir())."""
    return pathlib.Path(build if build is not None else build_dir()) / "bin" / "lwq"


def run(args: Iterable[object], exe: Optional[PathLike] = None, check: bool = True, timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess:
    """Runs `exe args...` (exe: tool_path() by default; args converted with str) with stdout and stderr captured as
    text. check: raise ToolError when it fails; otherwise the caller looks at returncode."""
    cmd = [str(exe if exe is not None else tool_path()), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise ToolError(proc)
    return proc
