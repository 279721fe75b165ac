#!/usr/bin/env bash
# Configures and builds lwq (Release) into build/, or into $LWQ_BUILD_DIR when set. Arguments are the targets to
# build (default: all), e.g. `scripts/build.sh lwq_cli lwq_ops` for the tool and the operator library only.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir="${LWQ_BUILD_DIR:-build}"
targets=()
for t in "$@"; do targets+=(--target "$t"); done

# Tests run on .venv's Python (Debian's torch plus the pinned references, scripts/setup.sh) when it exists.
python_opt=()
if [ -x .venv/bin/python ]; then python_opt=(-DLWQ_PYTHON="$(pwd)/.venv/bin/python"); fi
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "${python_opt[@]}"
cmake --build "$build_dir" -j"$(nproc)" "${targets[@]}"
