"""Reading tensors from files without trusting them.

safetensors headers are parsed and validated here (length, JSON, offsets, dtypes, sizes)
before any tensor is built, so hostile files give a one-line `InputError`, not a traceback.
Pickle containers are only opened with ``torch.load(weights_only=True)`` and only when the
caller explicitly allows it.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError

MAX_HEADER_BYTES = 100_000_000  # the Rust reference implementation's limit
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


@dataclass
class TensorFile:
    """All tensors of one file plus its string metadata and per-tensor dtype names."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    dtypes: dict[str, str]
    path: str


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """Parse and validate a safetensors header; return (header dict, data start offset)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise InputError("not a safetensors file: shorter than its 8-byte header length", path=p)
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES:
                raise InputError(f"not a safetensors file: header length {n} is over the {MAX_HEADER_BYTES} byte limit", path=p)
            if 8 + n > size:
                raise InputError(f"truncated safetensors file: header needs {8 + n} bytes, file has {size}", path=p)
            raw = fh.read(n)
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", path=p) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError("safetensors header is not valid JSON", path=p) from None
    if not isinstance(header, dict):
        raise InputError("safetensors header is not a JSON object", path=p)
    data_len = size - 8 - n
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise InputError("safetensors __metadata__ must map strings to strings", path=p)
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise InputError(f"tensor {key!r} has a malformed header entry", path=p)
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            raise InputError(f"tensor {key!r} has unsupported dtype {dtype!r}", path=p)
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise InputError(f"tensor {key!r} has a malformed shape {shape!r}", path=p)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise InputError(f"tensor {key!r} has malformed data_offsets", path=p)
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise InputError(f"tensor {key!r} lies outside the file (truncated?)", path=p)
        if end - begin != math.prod(shape) * DTYPES[dtype][1]:
            raise InputError(f"tensor {key!r}: {end - begin} bytes do not fit shape {shape} of {dtype}", path=p)
        spans.append((begin, end, key))
    spans.sort()
    for (b0, e0, k0), (b1, _, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise InputError(f"tensors {k0!r} and {k1!r} overlap", path=p)
    return header, 8 + n


def read_safetensors(path: str | os.PathLike) -> TensorFile:
    header, start = read_header(path)
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, torch.Tensor] = {}
    dtypes: dict[str, str] = {}
    with open(path, "rb") as fh:  # one read of the data region; tensors are views into it
        fh.seek(start)
        data = bytearray(os.fstat(fh.fileno()).st_size - start)
        if fh.readinto(data) != len(data):
            raise InputError("file changed while it was read", path=path)
    for key, info in header.items():
        dtype, itemsize = DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        shape = info["shape"]
        if end == begin:
            tensors[key] = torch.empty(shape, dtype=dtype)
        elif begin % itemsize == 0:
            tensors[key] = torch.frombuffer(data, dtype=dtype, count=(end - begin) // itemsize, offset=begin).reshape(shape)
        else:  # unaligned: copy out
            tensors[key] = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype).reshape(shape)
        dtypes[key] = info["dtype"]
    return TensorFile(tensors, dict(metadata), dtypes, str(path))


def read_pickle(path: str | os.PathLike, *, allow_pickle: bool) -> TensorFile:
    """Read a torch pickle container with weights_only=True, and only when allowed."""
    if not allow_pickle:
        raise InputError(
            "is a pickle container; lolscan does not open pickles unless you pass --allow-pickle "
            "(it then uses torch.load(weights_only=True))",
            path=path,
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for hostile pickles
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"refused or unreadable pickle ({first[:160]})", path=path) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise InputError("pickle does not hold a flat mapping of names to tensors", path=path)
    dtypes = {k: _dtype_name(v.dtype) for k, v in obj.items()}
    return TensorFile(dict(obj), {}, dtypes, str(path))


def _dtype_name(dtype: torch.dtype) -> str:
    for name, (dt, _) in DTYPES.items():
        if dt == dtype:
            return name
    return str(dtype)


def _looks_pickled(path: Path) -> bool:
    """torch.save writes a zip archive (PK) or a raw pickle (protocol byte 0x80)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if head[8:9] == b"{":  # a safetensors header (its length may well start with byte 0x80)
        return False
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def read_tensor_file(path: str | os.PathLike, *, allow_pickle: bool = False) -> TensorFile:
    p = Path(path)
    if not p.exists():
        raise InputError("no such file", path=p)
    if p.suffix.lower() in PICKLE_SUFFIXES or _looks_pickled(p):
        return read_pickle(p, allow_pickle=allow_pickle)
    return read_safetensors(p)
