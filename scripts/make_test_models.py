#!/usr/bin/python3
"""Transitional: tests/cpp/test_model_surgery.cpp runs scripts/make_test_models.py. The fixture is
tests/python/fixtures/make_test_models.py; this runs it as a script (same files). Delete this file once that test
runs the fixture."""
import os
import runpy

runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "python", "fixtures",
                            "make_test_models.py"), run_name="__main__")
