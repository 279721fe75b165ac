"""Transitional: tests/cpp/test_tokenizer.cpp imports `llama2c` from scripts/ for its Python reference. The code is
lwq.llama2c (python/lwq/llama2c.py; the model and generate_greedy are lwq.llama). Delete this file once that test
imports lwq.llama2c and lwq.llama."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

from lwq.llama import generate_greedy, sequence_nll  # noqa: E402,F401
from lwq.llama2c import *  # noqa: E402,F401,F403
