#!/usr/bin/env bash
# ctest "packaging": the install and the CMake package work for another project.
#   1. cmake --install BUILD into a temporary prefix (headers, libraries, the lwq tool, CMake package, Python package)
#   2. configure and build examples/cpp against it (find_package(lwq), lwq::ops), linking with --as-needed so the
#      registration handling of lwq::ops is what keeps liblwq_ops.so loaded
#   3. quantize a small model and a synthetic Llama with the installed lwq tool, run both with the example, and
#      check the numbers and the generated tokens against the installed Python package
# usage: run_example.sh SOURCE_DIR BUILD_DIR [PYTHON]
set -euo pipefail
src=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)
python=${3:-/usr/bin/python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/lwq_packaging.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== install into $prefix"
cmake --install "$build" --prefix "$prefix" >"$work/install.log" || { cat "$work/install.log"; fail "install"; }
for f in lib/liblwq_ops.so lib/liblwq.so bin/lwq include/lwq_ops/ops.h include/lwq_ops/kernels/format.h \
         include/lwq/interop/gptq.h lib/cmake/lwq/lwqConfig.cmake lib/cmake/lwq/lwqTargets.cmake \
         lib/python3/dist-packages/lwq/__init__.py lib/python3/dist-packages/lwq/_install_layout.py; do
  [[ -e $prefix/$f ]] || fail "$f was not installed"
done

echo "== build examples/cpp against the installed package"
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S "$src/examples/cpp" -B "$work/example" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_EXE_LINKER_FLAGS=-Wl,--as-needed "${launcher[@]}" >"$work/configure.log" 2>&1 \
  || { cat "$work/configure.log"; fail "configure examples/cpp"; }
cmake --build "$work/example" -j2 >"$work/build.log" 2>&1 || { cat "$work/build.log"; fail "build examples/cpp"; }
example=$work/example/lwq_example
readelf -d "$example" | grep -q 'NEEDED.*liblwq_ops.so' || fail "lwq_example does not load liblwq_ops.so (DT_NEEDED)"

# From here on only the installed files are used: no build tree for the tool, the libraries or the Python package.
export PYTHONPATH=$prefix/lib/python3/dist-packages
unset LWQ_BUILD_DIR LWQ_LIBRARY_DIR
lwq=$prefix/bin/lwq

echo "== a small model: quantize with the installed lwq, run with the example, check against Python"
"$python" "$src/tests/python/fixtures/make_test_models.py" --out "$work/m" --seed 2
"$lwq" quantize --model "$work/m/scripted.pt" --weights "$work/m/scripted.safetensors" --algo rtn --dtype int4 \
    --group-size 16 --out "$work/q.pt" --quiet
"$example" "$work/q.pt" --shape 2,5,48 | tee "$work/run.txt"
"$python" - "$work/q.pt" "$work/run.txt" "$prefix" <<'PY'
import pathlib, sys, torch
import lwq
prefix = pathlib.Path(sys.argv[3]).resolve()
assert lwq.find_library().resolve() == prefix / "lib" / "liblwq_ops.so", lwq.find_library()
torch.manual_seed(0)
x = torch.randn(2, 5, 48)
with torch.no_grad():
    y = lwq.load(sys.argv[1])(x)
lines = dict(line.split(":", 1) for line in pathlib.Path(sys.argv[2]).read_text().splitlines())
assert lines["output shape"].split() == ["2", "5", "48"], lines
got_sum, got_first = float(lines["sum"]), [float(v) for v in lines["first"].split()]
assert abs(got_sum - y.sum().item()) <= 1e-4 * y.abs().sum().item(), (got_sum, y.sum().item())
torch.testing.assert_close(torch.tensor(got_first), y.reshape(-1)[:4], rtol=1e-5, atol=1e-6)
print("python agrees with the C++ example")
PY

echo "== a synthetic Llama: greedy generation in C++ and in Python give the same tokens"
"$python" -m lwq.export --synthetic stories260K --out "$work/llama" --quiet  # the installed package
"$lwq" quantize --model "$work/llama/model.pt" --weights "$work/llama" --algo rtn --dtype int4 --group-size 32 \
    --out "$work/llama_q.pt" --quiet
"$example" "$work/llama_q.pt" --generate 24 | tee "$work/gen.txt"
"$python" - "$work/llama_q.pt" "$work/gen.txt" <<'PY'
import pathlib, sys, torch
import lwq, lwq.llama
tokens = lwq.llama.generate_greedy(lwq.load(sys.argv[1]), 24)
got = [int(t) for t in pathlib.Path(sys.argv[2]).read_text().split(":", 1)[1].split()]
assert got == tokens and len(tokens) > 0, (got, tokens)
print(f"python generates the same {len(tokens)} tokens")
PY
echo "packaging: 1 passed, 0 failed"
