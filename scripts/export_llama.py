#!/usr/bin/python3
"""Export a Llama to lwq's model directory: this checkout's `python3 -m lwq.export` (python/lwq/export.py), kept
here so that `scripts/export_llama.py ...` commands keep working. `--help` lists the options."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

from lwq.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
