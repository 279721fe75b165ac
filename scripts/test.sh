#!/usr/bin/env bash
# The README's test command: set up (if needed), configure, build, and run every test (ctest, which also runs the
# pytest suite). Extra arguments go to ctest (e.g. -R Gptq).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure -j"$(nproc)" "$@"
