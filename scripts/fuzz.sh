#!/usr/bin/env bash
# Fuzzing and sanitizers (issue 19). Builds lwq with clang, AddressSanitizer and UndefinedBehaviorSanitizer and
# libFuzzer into build-fuzz/ ($LWQ_FUZZ_BUILD_DIR), then:
#   1. runs every fuzz target (fuzz/*.cpp) for SECONDS (default 60) on a scratch copy of its seed corpus
#      (fuzz/corpus/NAME) and the regression inputs (fuzz/regressions/NAME),
#   2. runs the C++ unit tests that need no Python process under the same sanitizers.
# Any crash, sanitizer report or leak fails the run; a crashing input is kept as build-fuzz/crashes/NAME/crash-*
# (add it to fuzz/regressions/NAME once fixed, so the normal tests replay it). Prints, per target, the executions,
# the corpus size it ended with and the crashes.
#   bash scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
build_dir="${LWQ_FUZZ_BUILD_DIR:-build-fuzz}"
# Every target is fuzzed (sentencepiece_model is built without libtorch: CMakeLists.txt says why).
fuzzers=()
for src in fuzz/*.cpp; do
  name="$(basename "$src" .cpp)"
  [ "$name" = replay_main ] || fuzzers+=("$name")
done

# -O1 with line tables: symbolized reports, and about half the compile time of -O2 -g.
CC=clang CXX=clang++ cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS="-O1 -gline-tables-only" \
  -DLWQ_FUZZ=ON >/dev/null
targets=(--target lwq_tests)
for f in "${fuzzers[@]}"; do targets+=(--target "fuzz_$f"); done
cmake --build "$build_dir" -j"$(nproc)" "${targets[@]}"

# libtorch's own allocations at exit are not ours to fix; every other report fails the run.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:alloc_dealloc_mismatch=0"
export LSAN_OPTIONS="suppressions=$(pwd)/fuzz/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

status=0
summary=()
for f in "${fuzzers[@]}"; do
  work="$build_dir/corpus/$f"
  crashes="$build_dir/crashes/$f"
  rm -rf "$work" "$crashes"
  mkdir -p "$work" "$crashes"
  cp fuzz/corpus/"$f"/* "$work"/
  inputs=("$work")
  [ -d "fuzz/regressions/$f" ] && inputs+=("fuzz/regressions/$f")
  dict=()
  [ -f "fuzz/$f.dict" ] && dict=(-dict="fuzz/$f.dict")
  log="$build_dir/fuzz_$f.log"
  echo "fuzz: $f for ${seconds} s"
  if "$build_dir/bin/fuzz_$f" "${dict[@]}" -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=1024 \
      -max_len=65536 -timeout=20 -artifact_prefix="$crashes/" "${inputs[@]}" >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
    tail -n 40 "$log"
  fi
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
  [ -n "$execs" ] || execs="$(grep -oE '#[0-9]+' "$log" | tail -n 1 | tr -d '#')"
  summary+=("$(printf '%-20s %-7s executions %-9s corpus %-5s crashes %s' "$f" "$result" "${execs:-?}" \
    "$(ls "$work" | wc -l)" "$(ls "$crashes" | wc -l)")")
done

echo "sanitizers: C++ unit tests"
# The tests that start a Python process (which cannot load an instrumented library) are left to the normal run.
if ! "$build_dir/bin/lwq_tests" --gtest_brief=1 \
    --gtest_filter="-*Python*:*Reference*:*RealTokenizer*:TinyLlama*:*Golden*" >"$build_dir/unit_tests.log" 2>&1; then
  status=1
  tail -n 60 "$build_dir/unit_tests.log"
  summary+=("unit tests (sanitized) FAILED: $build_dir/unit_tests.log")
else
  summary+=("unit tests (sanitized) ok: $(grep -o '[0-9]* tests\? from [0-9]* test suites\? ran' "$build_dir/unit_tests.log" | head -n 1)")
fi

printf '%s\n' "${summary[@]}"
exit $status
