#!/usr/bin/env bash
# The lwq demo in one command: set up the Debian packages (when the setup script is present), build into build/,
# then quantize the real stories260K Llama in several formats and print quality, size and speed against fp32
# (scripts/demo.py; its options pass through, e.g. --segments 600 or --data DIR).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if [ -f scripts/setup.sh ]; then
  bash scripts/setup.sh
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
exec /usr/bin/python3 scripts/demo.py "$@"
