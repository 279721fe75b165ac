"""safetensors in plain Python (json + struct + torch), lwq's one reader and writer of the format.

Format: 8-byte little-endian header length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets": [begin,
end]}, "__metadata__": {...}}, then the raw little-endian data (offsets relative to its start).

- SafetensorsFile / WeightStore: read one tensor at a time with readinto (only that tensor is resident), from a file,
  or a directory with a Hugging Face model.safetensors.index.json and its shards (or exactly one .safetensors file).
- read_safetensors: every tensor and the metadata of one (small) file.
- ShardedWriter: streams tensors into one file or HF-style shards in a planned order; the headers are written from
  the plan first, so no tensor has to be held after it is written. write_safetensors: one small file at once.
- load_into_module: fills the (meta) parameters of an nn.Module or a torch.jit.load-ed ScriptModule from a store.
"""

import json
import math
import os
import struct
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES: Dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER = 100 * 1024 * 1024  # as the reference implementation: a larger header is a corrupt file

if sys.byteorder != "little":
    raise ImportError("lwq.safetensors writes the machine's byte order, which must be little-endian")


def element_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _as_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without a copy (numpy has no bfloat16: viewed as int16)."""
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    elif t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return memoryview(t.numpy()).cast("B")


class SafetensorsFile:
    """One safetensors file. The header is validated when opened (ValueError naming the file and tensor)."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{path}: {size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise ValueError(f"{path}: header of {n} bytes does not fit the file of {size} bytes")
            try:
                header = json.loads(f.read(n))
            except ValueError as e:
                raise ValueError(f"{path}: header is not valid JSON: {e}") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: header is not a JSON object")
        self.data_start = 8 + n
        self.metadata: Dict[str, str] = header.pop("__metadata__", None) or {}
        self.tensors: Dict[str, Tuple[torch.dtype, Tuple[int, ...], int, int]] = {}
        data_size = size - self.data_start
        for name, info in header.items():
            try:
                dtype = DTYPES[info["dtype"]]
                shape = tuple(int(s) for s in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}: tensor '{name}': malformed entry {info!r}") from None
            if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_size:
                raise ValueError(f"{path}: tensor '{name}': shape {list(shape)} or byte range [{begin}, {end}) "
                                 f"invalid for a data section of {data_size} bytes")
            if math.prod(shape) * element_size(dtype) != end - begin:
                raise ValueError(f"{path}: tensor '{name}': shape {list(shape)} of {info['dtype']} needs "
                                 f"{math.prod(shape) * element_size(dtype)} bytes, the range holds {end - begin}")
            self.tensors[name] = (dtype, shape, begin, end)

    def names(self) -> List[str]:
        return list(self.tensors)

    def dtype(self, name: str) -> torch.dtype:
        return self._entry(name)[0]

    def shape(self, name: str) -> Tuple[int, ...]:
        return self._entry(name)[1]

    def _entry(self, name: str):
        if name not in self.tensors:
            raise KeyError(f"{self.path}: no tensor '{name}'")
        return self.tensors[name]

    def read(self, name: str, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """The tensor in its stored dtype (a fresh, owned copy), or its rows start..stop-1 (dimension 0)."""
        dtype, shape, begin, end = self._entry(name)
        if start != 0 or stop is not None:
            if not shape:
                raise ValueError(f"{self.path}: tensor '{name}' is a scalar, it has no rows")
            stop = shape[0] if stop is None else stop
            if not 0 <= start <= stop <= shape[0]:
                raise ValueError(f"{self.path}: tensor '{name}': rows {start}..{stop} outside [0, {shape[0]}]")
            row = math.prod(shape[1:]) * element_size(dtype)
            begin, end = begin + start * row, begin + stop * row
            shape = (stop - start,) + tuple(shape[1:])
        out = torch.empty(shape, dtype=dtype)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            got = f.readinto(_as_bytes(out)) if end > begin else 0
        if got != end - begin:
            raise ValueError(f"{self.path}: tensor '{name}': read {got} of {end - begin} bytes")
        return out


def read_safetensors(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors, metadata) of one safetensors file, every tensor read whole in its stored dtype, in file order.
    Raises ValueError naming the file and tensor on a malformed file."""
    f = SafetensorsFile(os.fspath(path))
    return {name: f.read(name) for name in f.names()}, dict(f.metadata)


class WeightStore:
    """Tensors by name from a .safetensors file or a directory (HF index + shards, or a single .safetensors)."""

    def __init__(self, path: str):
        self.path = path
        self.files: Dict[str, SafetensorsFile] = {}
        self.where: Dict[str, SafetensorsFile] = {}
        if os.path.isdir(path):
            index = os.path.join(path, INDEX_NAME)
            if os.path.exists(index):
                with open(index) as f:
                    weight_map = json.load(f).get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise ValueError(f"{index}: no \"weight_map\" object")
                for name, file in weight_map.items():
                    st = self._open(os.path.join(path, file))
                    if name not in st.tensors:
                        raise ValueError(f"{index}: maps tensor '{name}' to {file}, which does not hold it")
                    self.where[name] = st
                return
            found = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
            if len(found) != 1:
                raise ValueError(f"{path}: expected {INDEX_NAME} or exactly one .safetensors file, found "
                                 f"{len(found)}")
            path = os.path.join(path, found[0])
        st = self._open(path)
        self.where = {name: st for name in st.tensors}

    def _open(self, path: str) -> SafetensorsFile:
        if path not in self.files:
            self.files[path] = SafetensorsFile(path)
        return self.files[path]

    def names(self) -> List[str]:
        return list(self.where)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def file_of(self, name: str) -> SafetensorsFile:
        if name not in self.where:
            raise KeyError(f"{self.path}: no tensor '{name}'")
        return self.where[name]

    def shape(self, name: str) -> Tuple[int, ...]:
        return self.file_of(name).shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self.file_of(name).dtype(name)

    def read(self, name: str, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        return self.file_of(name).read(name, start, stop)


def load_into_module(module: torch.nn.Module, weights: Union[str, WeightStore], strict: bool = True) -> List[str]:
    """Sets every parameter of `module` (an nn.Module or a ScriptModule, typically with meta parameters) to the
    tensor of the same qualified name in `weights`, converted to the parameter's dtype. Returns the names set.
    strict: every parameter must be in the store and every tensor of the store must be a parameter."""
    store = weights if isinstance(weights, WeightStore) else WeightStore(weights)
    owners = dict(module.named_modules())
    params = dict(module.named_parameters())
    if strict:
        missing = sorted(set(params) - set(store.names()))
        unused = sorted(set(store.names()) - set(params))
        if missing or unused:
            raise ValueError(f"{store.path}: does not match the module: missing {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''}, not parameters {unused[:5]}"
                             f"{'...' if len(unused) > 5 else ''}")
    done = []
    for name, current in params.items():
        if name not in store:
            continue
        if tuple(store.shape(name)) != tuple(current.shape):
            raise ValueError(f"{store.path}: tensor '{name}' has shape {list(store.shape(name))}, the module's "
                             f"parameter {list(current.shape)}")
        owner_name, _, attr = name.rpartition(".")
        value = store.read(name).to(current.dtype)
        owner = owners[owner_name]
        if isinstance(owner, torch.jit.ScriptModule):
            setattr(owner, attr, value)
        else:
            setattr(owner, attr, torch.nn.Parameter(value, requires_grad=False))
        done.append(name)
    return done


# ----------------------------------------------------------------------------------------------------------------
# Writing


def shard_file_names(n: int) -> List[str]:
    if n == 1:
        return [SINGLE_NAME]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def plan_shards(entries: Sequence[Tuple[str, Sequence[int], torch.dtype]], shard_size: int) -> List[List[int]]:
    """Indices of `entries` per shard, in order: a shard is closed when the next tensor would take its data past
    shard_size bytes (a tensor larger than that gets a shard of its own)."""
    shards: List[List[int]] = [[]]
    used = 0
    for i, (_, shape, dtype) in enumerate(entries):
        n = math.prod(shape) * element_size(dtype)
        if shards[-1] and used + n > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(i)
        used += n
    return shards


def header_bytes(entries: Sequence[Tuple[str, Sequence[int], torch.dtype]],
                 metadata: Optional[Dict[str, str]] = None) -> bytes:
    """8-byte length + JSON header (padded with spaces to a multiple of 8) for tensors stored back to back."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, shape, dtype in entries:
        n = math.prod(shape) * element_size(dtype)
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


class ShardedWriter:
    """Writes the tensors of `entries` (name, shape, dtype), in that order, into `directory`: model.safetensors,
    or model-0000i-of-0000n.safetensors + model.safetensors.index.json when the data exceeds shard_size bytes.
    write() must be called once per entry in order; close() checks every entry was written and fsyncs."""

    def __init__(self, directory: str, entries: Sequence[Tuple[str, Sequence[int], torch.dtype]],
                 shard_size: int, metadata: Optional[Dict[str, str]] = None):
        if shard_size <= 0:
            raise ValueError(f"shard size must be positive, got {shard_size}")
        self.directory = directory
        self.entries = [(name, tuple(shape), dtype) for name, shape, dtype in entries]
        self.metadata = metadata
        self.shards = plan_shards(self.entries, shard_size)
        self.files = shard_file_names(len(self.shards))
        self.shard_of = {i: s for s, members in enumerate(self.shards) for i in members}
        self.next = 0
        self.current: Optional[int] = None
        self.handle = None
        self.total_bytes = sum(math.prod(s) * element_size(d) for _, s, d in self.entries)

    def _switch(self, shard: int) -> None:
        self._close_handle()
        self.current = shard
        self.handle = open(os.path.join(self.directory, self.files[shard]), "wb")
        self.handle.write(header_bytes([self.entries[i] for i in self.shards[shard]], self.metadata))

    def _close_handle(self) -> None:
        if self.handle is not None:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            self.handle = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.write_rows(name, [tensor])

    def write_rows(self, name: str, parts: Iterable[torch.Tensor]) -> None:
        """Writes the next planned tensor from consecutive row blocks (dimension 0), each dropped once written."""
        if self.next >= len(self.entries):
            raise ValueError(f"tensor '{name}' written after the last planned one")
        want_name, want_shape, want_dtype = self.entries[self.next]
        if name != want_name:
            raise ValueError(f"expected tensor '{want_name}' next, got '{name}'")
        shard = self.shard_of[self.next]
        if shard != self.current:
            self._switch(shard)
        rows = 0
        for part in parts:
            shape = tuple(part.shape)
            if part.dtype != want_dtype or shape[1:] != want_shape[1:] or len(shape) != len(want_shape) or \
                    rows + (shape[0] if shape else 1) > (want_shape[0] if want_shape else 1):
                raise ValueError(f"tensor '{name}' {list(want_shape)} {want_dtype}: got a part {list(shape)} "
                                 f"{part.dtype} after {rows} rows")
            if part.numel():
                self.handle.write(_as_bytes(part.detach().cpu().contiguous()))
            rows += shape[0] if shape else 1
        if rows != (want_shape[0] if want_shape else 1):
            raise ValueError(f"tensor '{name}' {list(want_shape)}: {rows} rows written")
        self.next += 1

    def close(self) -> List[str]:
        """Finishes the files (and the index when sharded); returns the file names written."""
        if self.next != len(self.entries):
            raise ValueError(f"{len(self.entries) - self.next} planned tensors were not written, the first "
                             f"'{self.entries[self.next][0]}'")
        self._close_handle()
        if len(self.files) == 1:
            return list(self.files)
        index = {"metadata": {"total_size": self.total_bytes},
                 "weight_map": {self.entries[i][0]: self.files[s] for s, members in enumerate(self.shards)
                                for i in members}}
        with open(os.path.join(self.directory, INDEX_NAME), "w") as f:
            json.dump(index, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        return list(self.files) + [INDEX_NAME]

    def abort(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def write_safetensors(path, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    """One file holding `tensors` in the dict's order (small files: tests, fixtures)."""
    entries = [(name, tuple(t.shape), t.dtype) for name, t in tensors.items()]
    with open(path, "wb") as f:
        f.write(header_bytes(entries, metadata))
        for t in tensors.values():
            if t.numel():
                f.write(_as_bytes(t.detach().cpu().contiguous()))

