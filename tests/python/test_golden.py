"""The committed golden archive of format version 1 keeps loading and gives the numbers it was written with."""
import pathlib

import torch

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden" / "packed_v1.pt"


def test_golden_v1_archive_loads_and_matches(lwq_ops):
    module = torch.jit.load(str(GOLDEN))
    # Dequantized weights are pure format semantics: they must match bit for bit.
    assert torch.equal(module.dequantized(), module.expected_w)
    # Kernel outputs may change summation order between versions, never more than rounding.
    torch.testing.assert_close(module(module.x), module.expected_y, rtol=1e-5, atol=1e-5)


def test_golden_v1_state_is_version_1(lwq_ops):
    module = torch.jit.load(str(GOLDEN))
    state = module.int4_g32_asym.__getstate__()[0]  # def_pickle state, wrapped in a 1-tuple
    assert state[0] == 1 and state[1] == "int4" and state[5] is False
