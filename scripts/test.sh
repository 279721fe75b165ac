#!/usr/bin/env bash
# The README's test command: set up (if needed), configure, build, and run every test (ctest, which also runs the
# pytest suite). Extra arguments go to ctest (e.g. -R Gptq). The build goes to build/ ($LWQ_BUILD_DIR if set).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bash scripts/build.sh
ctest --test-dir "${LWQ_BUILD_DIR:-build}" --output-on-failure -j"$(nproc)" "$@"
