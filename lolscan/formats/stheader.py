"""safetensors headers, parsed and validated without torch.

`lolscan.formats.tensorfile` builds tensors on top of this; the light reader processes
(`lolscan.scan.lightread`) use it directly, so both refuse a hostile file with the same one-line
`InputError` (length, JSON, offsets, dtypes, sizes, overlaps; first problem wins).
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import InputError, elide, quoted

MAX_HEADER_BYTES = 100_000_000  # the Rust reference implementation's limit
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

# Bytes per element of each safetensors dtype name.
ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}

# One tensor of a safetensors file: (dtype name, shape, begin, end), offsets into the data region.
Entry = tuple[str, tuple[int, ...], int, int]


def read_header(fh: BinaryIO, p: Path) -> tuple[dict, int, dict[str, Entry], bytes]:
    """(header, data start, layout in header order, raw header bytes) of the open file `fh`, validated."""
    raw, data_len = read_raw_header(fh, p)
    header, layout = parse_header(raw, data_len, p)
    return header, 8 + len(raw), layout, raw


def read_raw_header(fh: BinaryIO, p: Path) -> tuple[bytes, int]:
    """(raw header bytes, length of the data region after them) of the open file `fh`; the length
    checks of `read_header`. What the header says depends on these two values only (`parse_header`)."""
    st = os.fstat(fh.fileno())
    if not stat.S_ISREG(st.st_mode):
        raise InputError("not a regular file", path=p)
    size = st.st_size
    head = fh.read(8)
    if len(head) < 8:
        raise InputError("not a safetensors file: shorter than its 8-byte header length", path=p)
    n = int.from_bytes(head, "little")
    if n > MAX_HEADER_BYTES:  # the number itself is not shown: it is 8 bytes of whatever the file is
        raise InputError(f"not a safetensors file: its first 8 bytes give a header length over the {MAX_HEADER_BYTES} byte limit", path=p)
    if 8 + n > size:
        raise InputError(f"truncated safetensors file: header needs {8 + n} bytes, file has {size}", path=p)
    return fh.read(n), size - 8 - n


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_header(raw: bytes, data_len: int, p: Path) -> tuple[dict, dict[str, Entry]]:
    """(header, layout in header order) of raw header bytes followed by ``data_len`` bytes, validated."""
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError):  # JSONDecodeError, NaN/Infinity, integers of over 4,300 digits
        raise InputError("safetensors header is not valid JSON", path=p) from None
    except RecursionError:
        raise InputError("safetensors header is not valid JSON (nested too deeply)", path=p) from None
    if not isinstance(header, dict):
        raise InputError("safetensors header is not a JSON object", path=p)
    return header, validate(header, data_len, p)


def _utf8(text: str) -> bool:
    """False for a string holding a lone surrogate (JSON lets ``\\ud800`` through; UTF-8 cannot say it)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _size(value: object) -> bool:
    """A JSON integer that fits the reference implementation's unsigned 64-bit sizes (no bool, no float)."""
    return type(value) is int and 0 <= value <= _U64


_U64 = (1 << 64) - 1


def validate(header: dict, data_len: int, p: Path) -> dict[str, Entry]:
    """Check every header entry (in file order, first problem wins); return the layout.

    As strict as the reference implementation (the `safetensors` library) and then some: known
    dtypes, integer shapes and offsets, sizes that fit the shapes, tensors that cover the data
    region back to back (no gap, no overlap, nothing after the last), keys and metadata valid UTF-8.
    """
    layout: dict[str, Entry] = {}
    sizes, prod = ITEMSIZE, math.prod
    for key, info in header.items():
        if not _utf8(key):
            raise InputError(f"tensor name {quoted(key)} is not valid UTF-8 (a lone surrogate)", path=p)
        if key == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) and _utf8(v) and _utf8(k) for k, v in info.items()):
                raise InputError("safetensors __metadata__ must map strings to strings", path=p)
            continue
        if not isinstance(info, dict) or "dtype" not in info or "shape" not in info or "data_offsets" not in info:
            raise InputError(f"tensor {quoted(key)} has a malformed header entry", path=p)
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in sizes:
            raise InputError(f"tensor {quoted(key)} has unsupported dtype {quoted(dtype, 40)}", path=p)
        if not isinstance(shape, list) or not all(_size(d) for d in shape):
            raise InputError(f"tensor {quoted(key)} has a malformed shape {elide(repr(shape), 80)}", path=p)
        if not (isinstance(offsets, list) and len(offsets) == 2 and _size(offsets[0]) and _size(offsets[1])):
            raise InputError(f"tensor {quoted(key)} has malformed data_offsets", path=p)
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise InputError(f"tensor {quoted(key)} lies outside the file (truncated?)", path=p)
        if end - begin != prod(shape) * sizes[dtype]:
            raise InputError(f"tensor {quoted(key)}: {end - begin} bytes do not fit shape {elide(str(shape), 80)} of {dtype}", path=p)
        layout[key] = (dtype, tuple(shape), begin, end)
    at, last = 0, None
    for begin, end, key in sorted([(begin, end, key) for key, (_, _, begin, end) in layout.items()]):
        if begin < at:
            raise InputError(f"tensors {quoted(last, 80)} and {quoted(key, 80)} overlap", path=p)
        if begin > at:
            raise InputError(f"{begin - at} unused bytes before tensor {quoted(key)} (a gap between tensors)", path=p)
        at, last = end, key
    if at != data_len:
        raise InputError(f"{data_len - at} bytes after the last tensor's data (the header does not cover the file)", path=p)
    return layout


def file_kind(mode: int) -> str:
    """What a path that is not a regular file is, for messages ("a FIFO", "a device", …), from its st_mode."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


def looks_pickled(path: Path) -> bool:
    """torch.save writes a zip archive (PK) or a raw pickle (protocol byte 0x80)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if head[8:9] == b"{":  # a safetensors header (its length may well start with byte 0x80)
        return False
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))
