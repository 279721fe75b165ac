#!/usr/bin/env bash
# The lwq demo in one command: set up the Debian packages, build the tool and the operator library into build/
# ($LWQ_BUILD_DIR if set), then quantize a Llama with trained weights using the tool and print the table
# (scripts/demo.py; its options pass through: --no-shared-data forces the model trained here, --help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bash scripts/build.sh lwq_cli lwq_ops
exec /usr/bin/python3 scripts/demo.py "$@"
