"""The C++ safetensors reader on files written by Python with json + struct only (lwq.safetensors; no safetensors
package): tensors in the dict's order (not sorted, unlike the C++ writer), back to back, header padded to 8 bytes."""
import json
import struct

import pytest
import torch

from lwq.safetensors import write_safetensors


def sample():
    g = torch.Generator().manual_seed(0)
    return {
        "z.f32": torch.randn(4, 3, generator=g),
        "odd.u8": torch.randint(0, 256, (3,), dtype=torch.uint8, generator=g),  # the next tensors start unaligned
        "b.f16": torch.randn(7, generator=g).half(),
        "c.bf16": torch.randn(2, 3, 5, generator=g).bfloat16(),
        "ids.i64": torch.randint(-5, 5, (6,), generator=g),
        "empty.f32": torch.zeros(0, 4),
    }


def test_python_written_file_loads_with_exact_values(lwq_core, tmp_path):
    tensors = sample()
    path = tmp_path / "m.safetensors"
    write_safetensors(path, tensors, {"format": "pt"})
    loaded = lwq_core.load_safetensors(str(path))
    assert sorted(loaded) == sorted(tensors)
    for name, t in tensors.items():
        got = loaded[name]
        want = t.float() if t.is_floating_point() else t  # floating tensors come back as float32, exactly
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert torch.equal(got, want), name


def test_truncated_file_raises_naming_it(lwq_core, tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, sample())
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for n in (0, 7, 8, 20, len(data) // 2, len(data) - 1):
        cut.write_bytes(data[:n])
        with pytest.raises(RuntimeError, match="cut.safetensors"):
            lwq_core.load_safetensors(str(cut))


def test_header_error_names_the_tensor(lwq_core, tmp_path):
    path = tmp_path / "bad.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(RuntimeError, match=r"tensor 'w': shape \[3\] of F32 needs 12 bytes"):
        lwq_core.load_safetensors(str(path))
