"""The C++ safetensors reader on files written by Python with json + struct only (no safetensors package)."""
import json
import struct

import pytest
import torch

DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
               torch.int64: "I64", torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8"}


def tensor_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: same bits as int16
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def write_safetensors(path, tensors, metadata=None):
    """Tensors in the dict's order (not sorted, unlike the C++ writer), header padded to 8 bytes."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        raw = tensor_bytes(t)
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


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
