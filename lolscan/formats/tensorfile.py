"""Reading tensors from files without trusting them.

safetensors headers are parsed and validated here (length, JSON, offsets, dtypes, sizes)
before any tensor is built, so hostile files give a one-line `InputError`, not a traceback.
Pickle containers are only opened with ``torch.load(weights_only=True)`` and only when the
caller explicitly allows it.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError, quoted
from .stheader import FLOAT_DTYPES, PICKLE_SUFFIXES, Entry  # noqa: F401 - re-exported
from .stheader import file_kind
from .stheader import looks_pickled as _looks_pickled
from .stheader import read_header as _read_header

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


class SafetensorsTensors(Mapping[str, torch.Tensor]):
    """A safetensors file's tensors as a mapping, each built (a view into the data) on first access.

    Parsers mostly need shapes and dtypes (in `TensorFile.layout`) and a few values; building
    hundreds of tensor objects up front would cost more than the rest of the parse.
    """

    def __init__(self, data: bytearray, layout: dict[str, Entry]):
        self._data, self._layout = data, layout
        self._built: dict[str, torch.Tensor] = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        t = self._built.get(key)
        if t is None:
            t = self._built[key] = _view(self._data, self._layout[key])
        return t

    def __contains__(self, key: object) -> bool:
        return key in self._layout

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout)

    def __len__(self) -> int:
        return len(self._layout)


def _view(data: bytearray, entry: Entry) -> torch.Tensor:
    dtype_name, shape, begin, end = entry
    dtype, itemsize = DTYPES[dtype_name]
    if end == begin:
        return torch.empty(shape, dtype=dtype)
    if begin % itemsize == 0:
        return torch.frombuffer(data, dtype=dtype, count=(end - begin) // itemsize, offset=begin).reshape(shape)
    return torch.frombuffer(bytearray(data[begin:end]), dtype=dtype).reshape(shape)  # unaligned: copy out


@dataclass
class TensorFile:
    """All tensors of one file plus its string metadata and per-tensor dtype names.

    For safetensors files `tensors` builds each tensor on first access, `layout` holds every
    tensor's (dtype name, shape, begin, end) with offsets into `data` (the file's data region).
    """

    tensors: Mapping[str, torch.Tensor]
    metadata: dict[str, str]
    dtypes: dict[str, str]
    path: str
    layout: dict[str, Entry] | None = None
    data: bytearray | None = None

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape of tensor `key`, without building it."""
        return self.layout[key][1] if self.layout is not None else tuple(self.tensors[key].shape)


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """Parse and validate a safetensors header; return (header dict, data start offset)."""
    p = Path(path)
    check_regular(p)
    try:
        with open(p, "rb") as fh:
            header, start, _, _ = _read_header(fh, p)
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", path=p) from None
    return header, start


def read_safetensors(path: str | os.PathLike) -> TensorFile:
    """Validate the header, then read the data region once; tensors are views into it, built on access."""
    p = Path(path)
    check_regular(p)
    try:
        fh = open(p, "rb")
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", path=p) from None
    with fh:
        try:
            header, start, layout, raw = _read_header(fh, p)
        except OSError as exc:
            raise InputError(f"cannot read file: {exc.strerror or exc}", path=p) from None
        data = bytearray(os.fstat(fh.fileno()).st_size - start)
        if fh.readinto(data) != len(data):
            raise InputError("file changed while it was read", path=path)
    metadata = header.get("__metadata__") or {}
    dtypes = {key: entry[0] for key, entry in layout.items()}
    tensors = SafetensorsTensors(data, layout)
    return TensorFile(tensors, dict(metadata), dtypes, str(path), layout, data)


def float32_copies(tf: TensorFile, keys: Iterable[str]) -> dict[str, tuple[torch.Tensor, int]]:
    """Fresh float32 copies of the floating-point tensors `keys`: {key: (flat buffer, element offset)}.

    Tensors that lie back to back in a safetensors file with one dtype are converted together
    (one op per run, not one per tensor), so several keys share a buffer; the buffers belong to
    the caller, who may scale them in place. Values are exactly ``tensor.to(torch.float32)``.
    """
    wanted = {k for k in keys if tf.dtypes.get(k) in FLOAT_DTYPES}
    if tf.layout is None or tf.data is None:
        return {k: (tf.tensors[k].reshape(-1).to(torch.float32, copy=True), 0) for k in wanted}
    out: dict[str, tuple[torch.Tensor, int]] = {}
    for run in _runs(tf.layout, wanted):
        dtype_name, begin, end = tf.layout[run[0]][0], tf.layout[run[0]][2], tf.layout[run[-1]][3]
        buf = _view(tf.data, (dtype_name, ((end - begin) // DTYPES[dtype_name][1],), begin, end)).to(torch.float32, copy=True)
        itemsize = DTYPES[dtype_name][1]
        for k in run:
            out[k] = (buf, (tf.layout[k][2] - begin) // itemsize)
    return out


def _runs(layout: dict[str, Entry], wanted: set[str]) -> list[list[str]]:
    """Wanted keys grouped into runs of back-to-back tensors of one dtype (file order).

    A run may hold unwanted tensors between wanted ones (e.g. kohya's `.alpha` scalars), never
    before the first or after the last.
    """
    runs: list[list[str]] = []
    current: list[str] = []
    last_wanted = 0  # length of `current` up to its last wanted key
    prev: Entry | None = None
    for key in sorted(layout, key=lambda k: layout[k][2:]):
        entry = layout[key]
        if prev is None or entry[0] != prev[0] or entry[2] != prev[3] or entry[0] not in FLOAT_DTYPES:
            if last_wanted:
                runs.append(current[:last_wanted])
            current, last_wanted = [], 0
        if entry[0] in FLOAT_DTYPES and (current or key in wanted):
            current.append(key)
            if key in wanted:
                last_wanted = len(current)
        prev = entry
    if last_wanted:
        runs.append(current[:last_wanted])
    return runs


def read_pickle(path: str | os.PathLike, *, allow_pickle: bool) -> TensorFile:
    """Read a torch pickle container with weights_only=True, and only when allowed."""
    if not allow_pickle:
        raise InputError(
            "is a pickle container; lolscan does not open pickles unless you pass --allow-pickle "
            "(it then uses torch.load(weights_only=True))",
            path=path,
        )
    try:
        with open(path, "rb") as fh:  # a file object: torch.load given a path named *.safetensors reads it as safetensors
            obj = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for hostile pickles
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"refused or unreadable pickle ({first[:160]})", path=path) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise InputError("pickle does not hold a flat mapping of names to tensors", path=path)
    for k in obj:
        if not k.isascii():
            try:
                k.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(f"tensor name {quoted(k)} is not valid UTF-8 (a lone surrogate)", path=path) from None
    dtypes = {k: _dtype_name(v.dtype) for k, v in obj.items()}
    return TensorFile(dict(obj), {}, dtypes, str(path))


def _dtype_name(dtype: torch.dtype) -> str:
    for name, (dt, _) in DTYPES.items():
        if dt == dtype:
            return name
    return str(dtype)


def read_tensor_file(path: str | os.PathLike, *, allow_pickle: bool = False) -> TensorFile:
    p = Path(path)
    check_regular(p)
    if p.suffix.lower() in PICKLE_SUFFIXES or _looks_pickled(p):
        return read_pickle(p, allow_pickle=allow_pickle)
    return read_safetensors(p)


def check_regular(p: Path) -> None:
    """Refuse what is not a regular file before opening it: opening a FIFO waits for a writer, a
    device never ends."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError("no such file", path=p) from None
    except OSError as exc:  # a symlink loop, a permission, ...
        raise InputError(f"cannot read file: {exc.strerror or exc}", path=p) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"not a regular file ({file_kind(st.st_mode)})", path=p)
