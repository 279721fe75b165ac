#!/usr/bin/env bash
# The README's test command: set up (if needed), configure, build, and run every test (ctest, which also runs the
# pytest suite and replays the fuzz inputs), then the fuzzers and the sanitized unit tests (scripts/fuzz.sh). Extra
# arguments go to ctest (e.g. -R Gptq). The build goes to build/ ($LWQ_BUILD_DIR if set).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bash scripts/build.sh
ctest --test-dir "${LWQ_BUILD_DIR:-build}" --output-on-failure -j"$(nproc)" "$@"
# The fuzz targets (a bounded time each) and the sanitized C++ unit tests; LWQ_FUZZ_SECONDS=0 skips them (a quick
# local run), and they are skipped when ctest was given a selection.
fuzz_seconds="${LWQ_FUZZ_SECONDS:-45}"
if [ "$#" -eq 0 ] && [ "$fuzz_seconds" != 0 ]; then
  bash scripts/fuzz.sh "$fuzz_seconds"
fi
