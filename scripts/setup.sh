#!/usr/bin/env bash
# Installs every Debian package lwq needs to build, test and run, and makes .venv with the pinned test references
# (tests/requirements.txt). Safe to run again: it installs only what is missing. Needs root (or sudo) on Debian
# bookworm.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake git ccache
  libtorch-dev python3-torch      # LibTorch 1.13 (C++) and the system Python's torch (/usr/bin/python3)
  libopenblas0-openmp             # fast BLAS for libtorch: without it fp32 GEMM runs ~20x slower
  nlohmann-json3-dev
  libcli11-dev                    # the lwq tool's command line (CLI11, header-only)
  libgtest-dev googletest
  python3-pytest python3-numpy python3-venv
  clang libclang-rt-14-dev libomp-dev   # scripts/fuzz.sh: libFuzzer, AddressSanitizer, UBSan, clang's OpenMP
  libsentencepiece-dev            # SentencePiece tokenizer.model files
  libpcre2-dev                    # the pre-tokenizer split patterns of tokenizer.json (Unicode classes, lookahead)
  libicu-dev                      # NFC/NFKC normalizers of tokenizer.json (Qwen2)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: all packages present"
fi

# Debian's libtorch uses whichever libblas.so.3 is selected: make sure it is OpenBLAS (OpenMP flavour).
arch_dir=/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
for lib in libblas.so.3 liblapack.so.3; do
  target="$arch_dir/openblas-openmp/$lib"
  alt="$lib-$(basename "$arch_dir")"
  if [ -e "$target" ] && [ "$(readlink -f "$arch_dir/$lib")" != "$(readlink -f "$target")" ]; then
    $SUDO update-alternatives --set "$alt" "$target" >/dev/null
    echo "setup: $lib -> $target"
  fi
done

# The test references from PyPI (tests/requirements.txt, pinned) in the project's own virtual environment .venv,
# which sees Debian's torch (--system-site-packages). Tests that need them skip with a message where they are absent.
venv="$(pwd)/.venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
stamp="$venv/.requirements"
if ! cmp -s tests/requirements.txt "$stamp"; then
  echo "setup: installing tests/requirements.txt into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r tests/requirements.txt
  cp tests/requirements.txt "$stamp"
fi
