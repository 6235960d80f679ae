"""Torch-free reading of the common case, for the reader processes of `lolscan.scan.scoring`.

A reader process imports this module, numpy and lolscan's torch-free helpers only, so it starts in
a fraction of a second (a fork server that imports torch takes seconds from a cold disk). For each
file it validates the safetensors header (`stheader`, the checks and messages of `lolscan.load`),
recognises plain LoRA files — kohya, diffusers and PEFT keys whose modules are up/down pairs with
optional alphas (what `formats.plain` reads in bulk) — checks that the adapter fits the checkpoint's
layer spec and writes the factors straight into its shared-memory slot (`lolscan.scan.slots`): float16
and bfloat16 factors as the file's bits with each layer's scale, the others converted to float32
and scaled exactly as `lolscan.load` does. The batch the scorer assembles from the slot holds the
bytes of one assembled from ``pack(lolscan.load(path), spec)``.

Anything else (pickles, remote URIs, cloneofsimo, LyCORIS, DoRA, embeddings, adapters that do not
fit, a full slot, ...) is not decided here: `read_in_process` hands it to the full reader, which
imports torch in that process on first need.
"""
from __future__ import annotations

import math
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LolscanError, nonfinite_text
from ..formats.grouping import group_keys
from ..formats.names import dotted_module_name, kohya_module_name
from ..formats.peft_config import CONFIG_NAME, WEIGHT_NAMES, check_peft_type, is_peft_folder, read_config
from ..formats.scheme import (ScaleRule, alpha_rule, diffusers_scale_rule, is_plain_pair, kohya_format, kohya_name_rule, old_diffusers_keys,
                             old_module_name, peft_config_rule, scheme_of)
from .labels import LabelFiles, known_labels
from .npconvert import NUMPY, Converter
from .slots import InSlot
from .slots import layout as slot_layout
from ..sources.uris import is_remote
from ..formats.stheader import PICKLE_SUFFIXES, Entry, looks_pickled, parse_header, read_raw_header

# Single alpha values read exactly as `formats.common.scalar_of` reads them.
_SCALAR = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
_PLAIN_ROLES = ({"up", "down"}, {"up", "down", "alpha"})
_SPLIT_QKV = ("attn_qkv", "linear1")  # kohya Flux modules whose notes need the tensors: full reader


@dataclass(frozen=True)
class ArenaInfo:
    """What a reader process needs to attach to the scorer's shared-memory slots: picklable."""

    name: str
    slots: int
    slot_floats: int


@dataclass
class Light:
    """One plain module: its factors' safetensors entries, scale and canonical size."""

    up: Entry
    down: Entry
    scale: float
    n: int
    m: int
    name: str = ""

    @property
    def rank(self) -> int:
        return self.down[1][0]


def base_row(source: str) -> dict[str, Any]:
    return {"source": source, "status": "ok", "error": None, "predictions": {}, "truth": {}, "gates": []}


def nonfinite_message(names: list[str]) -> str:
    """The error of a row whose adapter holds NaN/Inf values (status ``nonfinite``), naming the modules."""
    return f"{nonfinite_text(names)}; not scored"


def one_line(exc: BaseException, source: str) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for prefix in (f"{source}: ", f"{source}{os.sep}"):  # the row names the source already
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


class LightReader:
    """Reads plain LoRA files into shared-memory slots for one checkpoint (see the module docstring).

    ``rule`` is `Checkpoint.fit_rule()`; groups are the spec's shape groups in `LayerSpec` order.
    """

    def __init__(self, rule: dict[str, Any], targets: list[str]):
        self.groups: list[tuple[int, int, list[str]]] = []
        self.shapes: dict[str, tuple[int, int]] = {}
        by_shape: dict[tuple[int, int], int] = {}
        for layer in rule["spec"]["layers"]:
            key = (layer["n"], layer["m"])
            if key not in by_shape:
                by_shape[key] = len(self.groups)
                self.groups.append((key[0], key[1], []))
            self.groups[by_shape[key]][2].append(layer["name"])
            self.shapes[layer["name"]] = key
        self.rank = rule.get("rank")
        self.targets = list(targets)
        self._labels = LabelFiles()
        self._buf = bytearray()  # the data region of the file being read, reused
        self._convert = Converter()
        self._plans: OrderedDict[tuple[bytes, int, bool], _Plan | None] = OrderedDict()  # header cache, see `_plan`
        self._plan_bytes = 0
        self.overflowed: list[str] = []  # modules `_pack` found non-finite once scaled (float32 overflow)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_labels", "_buf", "_convert", "_plans", "_plan_bytes")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._labels, self._buf, self._convert = LabelFiles(), bytearray(), Converter()
        self._plans, self._plan_bytes = OrderedDict(), 0

    def read(self, source: str, slot: np.ndarray | None) -> tuple[dict[str, Any], InSlot | None, dict[str, Any]] | None:
        """(row, what was written into ``slot`` (bytes), known labels); for an unreadable header an
        error row (and None); None when the full reader must decide."""
        found = self._locate(source) if slot is not None else None
        if found is None:
            return None
        path, config = found
        try:
            parsed = self._parse(path, config)
        except LolscanError as exc:  # the header checks of lolscan.load, with its messages
            row = base_row(source)
            row.update(status="error", error=one_line(exc, source))
            return row, None, {}
        if parsed is None:
            return None
        fmt, layers, metadata, data = parsed
        if not self._fits(layers) or any(abs(layer.scale) > _MAX_SCALE for layer in layers.values()):
            return None  # (a scale so large that float32 factors may overflow: the full reader decides)
        bad = [name for name, layer in layers.items() if not _finite(layer, data)]
        if bad:
            row = base_row(source)
            row.update(status="nonfinite", error=nonfinite_message(bad), format=fmt, layers=len(layers),
                       rank=sorted({layer.rank for layer in layers.values()}))
            return row, None, {}
        where = self._pack(layers, data, slot)
        if where is None:
            return None
        if self.overflowed:
            names = [name for name in layers if name in set(self.overflowed)]  # in the file's order, as the full reader lists them
            row = base_row(source)
            row.update(status="nonfinite", error=nonfinite_message(names), format=fmt, layers=len(layers),
                       rank=sorted({layer.rank for layer in layers.values()}))
            return row, None, {}
        row = base_row(source)
        row["format"] = fmt
        row["rank"] = sorted({layer.rank for layer in layers.values()})
        row["layers"] = len(layers)
        labels = known_labels(metadata, source, self._labels)
        return row, where, {t: labels[t] for t in self.targets if t in labels}

    def _locate(self, source: str) -> tuple[Path, dict[str, Any] | None] | None:
        """The safetensors file to read and its adapter_config.json, as `formats.load_path` finds them."""
        if is_remote(source):
            return None
        p = Path(source).expanduser()
        try:
            if p.is_dir():
                if not is_peft_folder(p):
                    return None
                config = read_config(p / CONFIG_NAME)
                check_peft_type(config, p / CONFIG_NAME)
                weights = next((p / name for name in WEIGHT_NAMES if (p / name).is_file()), None)
                return (weights, config) if weights is not None and weights.name == WEIGHT_NAMES[0] else None
            if not p.is_file() or p.suffix.lower() in PICKLE_SUFFIXES or looks_pickled(p):
                return None
            sibling = p.parent / CONFIG_NAME
            if p.name in WEIGHT_NAMES and sibling.is_file():
                config = read_config(sibling)
                check_peft_type(config, sibling)
                return p, config
        except (LolscanError, OSError):
            return None
        return p, None

    def _parse(self, path: Path, config: dict[str, Any] | None) -> tuple[str, dict[str, Light], Mapping[str, str], memoryview] | None:
        """(format, {canonical name: module}, string metadata, data region) of a plain file, else None."""
        try:
            fh = open(path, "rb")
        except OSError:
            return None
        with fh:
            try:
                raw, size = read_raw_header(fh, path)
                plan = self._plan(raw, size, config is not None, path)
                if plan is None:
                    return None
                if len(self._buf) < size:
                    self._buf = bytearray(size)
                data = memoryview(self._buf)[:size]
                if fh.readinto(data) != size:
                    return None
            except OSError:
                return None
        fmt, metadata, modules, scale_of = plan
        if config is not None:  # a PEFT folder: the scale comes from its adapter_config.json
            scale_of = peft_config_rule(config)
        layers = self._layers(modules, data, scale_of)
        return (fmt, layers, metadata, data) if layers else None

    def _plan(self, raw: bytes, data_len: int, peft: bool, path: Path) -> _Plan | None:
        """What the header alone decides (validation, key scheme, modules, names), cached by the
        header's exact bytes and the data length: files of one trainer and shape share their header,
        and a repeat costs a dict lookup. A header that fails validation raises (with ``path``) and
        is never cached."""
        key = (raw, data_len, peft)
        cache = self._plans
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        header, layout = parse_header(raw, data_len, path)
        plan = _plan_of(header, layout, peft)
        if len(raw) <= PLAN_CACHE_BYTES // 4:
            cache[key] = plan
            self._plan_bytes += len(raw)
            while len(cache) > PLAN_CACHE_ENTRIES or self._plan_bytes > PLAN_CACHE_BYTES:
                old, _ = cache.popitem(last=False)
                self._plan_bytes -= len(old[0])
        return plan

    @staticmethod
    def _layers(modules: list[_Module], data: memoryview, scale_of: ScaleRule) -> dict[str, Light]:
        """`formats.build.build_layers` for files of plain pairs (the header checks are in the plan)."""
        layers: dict[str, Light] = {}
        for module, name, up, down, alpha_at, n, m in modules:
            alpha = None if alpha_at is None else float(np.frombuffer(data, alpha_at[0], 1, alpha_at[1])[0])
            scale, _ = scale_of(module, down[1][0], alpha)
            layers[name] = Light(up, down, scale, n, m, name)
        return layers

    def _fits(self, layers: dict[str, Light]) -> bool:
        """`checkpoint.check_fits` for a local file: every module in the spec with its shape (and at most the rank)."""
        for name, layer in layers.items():
            if self.shapes.get(name) != (layer.n, layer.m) or (self.rank is not None and layer.rank > self.rank):
                return False
        return True

    def _pack(self, layers: dict[str, Light], data: memoryview, slot: np.ndarray) -> InSlot | None:
        """Write the adapter into ``slot`` (bytes) in the layout of `lolscan.scan.slots`: a group whose
        factors are all float16 (or all bfloat16) with finite scales ≥ 0 keeps the file's bits, its
        scales stored beside them; any other group is converted to float32, scales folded in, as
        `packing.pack` writes it. None when the adapter does not fit the slot."""
        plan, ranks, dtypes, scaled = [], [], [], []
        for n, m, names in self.groups:
            members = [layers.get(name) for name in names]
            present = [x for x in members if x is not None]
            kinds = {e[0] for x in present for e in (x.up, x.down)}
            raw = len(kinds) == 1 and kinds <= {"F16", "BF16"} and all(math.isfinite(x.scale) and x.scale >= 0 for x in present)
            # bfloat16 spans float32's range: scaled up later it could overflow unchecked; converted here it is checked
            raw = raw and (kinds == {"F16"} or all(x.scale <= 1.0 for x in present))
            plan.append(members)
            ranks.append([0 if x is None else x.rank for x in members])
            dtypes.append(kinds.pop() if raw else "F32")
            scaled.append(raw and any(x.scale != 1.0 for x in present))
        where = InSlot(ranks, dtypes, scaled)
        blocks, used = slot_layout([(n, m) for n, m, _ in self.groups], where)
        if used > slot.size:
            return None
        self.overflowed = []
        convert = [e for members, d in zip(plan, dtypes) if d == "F32" for x in members if x is not None for e in (x.up, x.down)]
        with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32's range: Inf, reported below
            f32 = self._convert.float32(data, convert) if convert else {}
        for members, (u, v, sc), r in zip(plan, blocks, (b[0][1][2] for b in blocks)):
            U, V = _block(slot, u), _block(slot, v)
            if not all(x is not None and x.rank == r for x in members):
                U.fill(0)
                V.fill(0)
            for j, x in enumerate(members):
                if x is None:
                    continue
                if u[2] == "F32":
                    _write(U[j, :, : x.rank], V[j, :, : x.rank], x, f32)
                    if (x.scale != 1.0 or "F64" in (x.up[0], x.down[0])) and not (
                            np.isfinite(U[j, :, : x.rank]).all() and np.isfinite(V[j, :, : x.rank]).all()):
                        self.overflowed.append(x.name)  # finite in the file, not once scaled/converted (as the full reader finds)
                else:  # the file's bits; converted and scaled by the scorer (`packing.stack`)
                    np.copyto(U[j, :, : x.rank], _bits(data, x.up).reshape(-1, x.rank))
                    np.copyto(V[j, :, : x.rank], _bits(data, x.down).reshape(x.rank, -1).T)
            if sc is not None:
                _block(slot, sc)[:] = [np.float32(math.sqrt(x.scale)) if x is not None else 1.0 for x in members]
        return where


# One module of a plain file as its header describes it: (module key, canonical name, up entry,
# down entry, alpha (numpy dtype, offset) or None, n, m).
_Module = tuple[str, str, Any, Any, Any, int, int]
# (format, string metadata, modules, scale rule; the rule of a PEFT folder comes from its config).
_Plan = tuple[str, Mapping[str, str], list[_Module], Any]
PLAN_CACHE_ENTRIES = 64  # distinct headers remembered per reader process
PLAN_CACHE_BYTES = 32 << 20  # header bytes held as keys, all entries together


def _plan_of(header: dict, layout: dict[str, Entry], peft: bool) -> _Plan | None:
    """The header-only part of reading a plain file (None: the full reader decides)."""
    metadata = header.get("__metadata__") or {}
    if not layout or any(type(d) is not int for _, shape, _, _ in layout.values() for d in shape):
        return None  # no tensors, or JSON `true` as a dimension: the full reader says why
    scheme = "peft" if peft else scheme_of(layout, metadata)
    modules, _ = group_keys(layout)
    if scheme == "kohya":
        modules = {m: roles for m, roles in modules.items() if kohya_module_name(m) is not None}
        if any(m.endswith(_SPLIT_QKV) for m in modules):
            return None
        name_of, scale_of, fmt = kohya_name_rule(modules), alpha_rule(), kohya_format(metadata, ())
    elif scheme == "peft":
        name_of, scale_of, fmt = dotted_module_name, alpha_rule(), "peft"
    elif scheme == "diffusers":
        name_of = old_module_name if old_diffusers_keys(layout) else dotted_module_name
        scale_of, fmt = diffusers_scale_rule(metadata), "diffusers"
    else:
        return None
    plan: list[_Module] = []
    names: set[str] = set()
    for module, roles in modules.items():
        alpha_at = None
        if "alpha" in roles:
            entry = layout[roles["alpha"]]
            if entry[0] not in _SCALAR or entry[3] - entry[2] != _SCALAR[entry[0]].itemsize:
                return None
            alpha_at = (_SCALAR[entry[0]], entry[2])
        if roles.keys() == {"alpha"}:
            continue  # an alpha alone: reported as an extra tensor, not a layer
        if roles.keys() not in _PLAIN_ROLES:
            return None
        up, down = layout[roles["up"]], layout[roles["down"]]
        if not (is_plain_pair(up[0], up[1], down[0], down[1]) and up[0] in NUMPY and down[0] in NUMPY):
            return None
        name = name_of(module) or module
        if name in names:
            return None
        names.add(name)
        plan.append((module, name, up, down, alpha_at, up[1][0], math.prod(down[1][1:])))
    if not names:
        return None
    return fmt, metadata, plan, scale_of


_MAX_SCALE = 1e6
# Bit masks of the exponent field: all ones is Inf or NaN (float8 e4m3 has no Inf; its NaN is S.1111.111).
_NONFINITE = {"F16": (np.uint16, 0x7C00), "BF16": (np.uint16, 0x7F80), "F32": (np.uint32, 0x7F800000),
              "F64": (np.uint64, 0x7FF0000000000000), "F8_E5M2": (np.uint8, 0x7C), "F8_E4M3": (np.uint8, 0x7F)}


def _finite(layer: Light, data: memoryview) -> bool:
    """No NaN/Inf in the layer's factors or its scale (the full reader's `build.layer_finite`, on the bits)."""
    if not math.isfinite(layer.scale):
        return False
    for dtype_name, _, begin, end in (layer.up, layer.down):
        kind, mask = _NONFINITE[dtype_name]
        words = np.frombuffer(data, kind, (end - begin) // np.dtype(kind).itemsize, begin)
        if np.any((words & kind(mask)) == kind(mask)):
            return False
    return True


def _block(slot: np.ndarray, block: tuple[int, tuple[int, ...], str]) -> np.ndarray:
    """A block of the slot as an array: float32, or the raw 16-bit words of float16/bfloat16."""
    at, shape, dtype = block
    kind = np.float32 if dtype == "F32" else np.uint16
    return slot[at : at + math.prod(shape) * np.dtype(kind).itemsize].view(kind).reshape(shape)


def _bits(data: memoryview, entry: Entry) -> np.ndarray:
    return np.frombuffer(data, np.uint16, (entry[3] - entry[2]) // 2, entry[2])


def _write(U: np.ndarray, V: np.ndarray, x: Light, f32: dict[tuple[int, int], np.ndarray]) -> None:
    """U = sign(s)·√|s|·up and V = √|s|·downᵀ, as `formats.plain` computes them: float32 factors
    (converted exactly, float64 rounded once) multiplied in float32."""
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is found and reported by the caller
        _write_scaled(U, V, x, f32)


def _write_scaled(U: np.ndarray, V: np.ndarray, x: Light, f32: dict[tuple[int, int], np.ndarray]) -> None:
    n, k = U.shape
    up = f32[x.up[2], x.up[3]].reshape(n, k)
    down = f32[x.down[2], x.down[3]].reshape(k, -1).T
    if x.scale == 1.0:
        np.copyto(U, up)
        np.copyto(V, down)
        return
    c = math.sqrt(abs(x.scale))
    np.multiply(up, np.float32(c if x.scale >= 0 else -c), out=U)
    np.multiply(down, np.float32(c), out=V)


# --- the reader process ------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def attach(info: ArenaInfo) -> tuple[shared_memory.SharedMemory, np.ndarray]:
    """The scorer's segment as one byte array. The creator's resource tracker, which readers
    share, already knows the segment; unregistering here would drop the creator's registration."""
    shm = shared_memory.SharedMemory(name=info.name)
    return shm, np.frombuffer(shm.buf, np.uint8, info.slots * info.slot_floats * 4)


def init_worker(light: LightReader, full_reader: bytes, arena: ArenaInfo | None) -> None:
    """Reader processes get the readers (and the shared-memory arena) once, not with every file.
    ``full_reader`` is the pickled `scoring._Reader`, unpickled (importing torch) on first need."""
    _STATE.clear()
    _STATE.update(light=light, full_blob=full_reader, full=None, arena=None, flat=None)
    if arena is not None:
        _STATE["shm"], _STATE["flat"] = attach(arena)
        _STATE["arena"] = arena


def start_worker(configs: Any) -> None:
    """Initializer of reader processes started before the checkpoint is known (`scoring.ReaderPool`):
    importing this module is the warm-up; the readers come later, one copy per process, through
    ``configs`` (a multiprocessing queue), taken on the first read."""
    _STATE.clear()
    _STATE["configs"] = configs


def warm() -> int:
    """A no-op task that makes the pool start a reader process (its imports done when it returns)."""
    return os.getpid()


def read_in_process(source: str, slot: int | None = None) -> tuple[str, Any]:
    """("light", (row, InSlot, labels)) when this module read the file, else ("full", scoring._Item)."""
    if "light" not in _STATE:  # started ahead (`start_worker`): this process's copy of the readers
        init_worker(*_STATE["configs"].get())
    flat, info = _STATE["flat"], _STATE["arena"]
    size = 4 * info.slot_floats if info is not None else 0
    view = flat[slot * size : (slot + 1) * size] if flat is not None and slot is not None else None
    try:
        got = _STATE["light"].read(source, view)
    except Exception:  # an unusual file: the full reader decides, with lolscan.load's messages
        got = None
    if got is not None:
        return "light", got
    return "full", _full_read(source, view)


def _full_read(source: str, view: np.ndarray | None) -> Any:
    import torch

    from .discovery import Found

    if _STATE["full"] is None:
        torch.set_num_threads(1)
        _STATE["full"] = pickle.loads(_STATE["full_blob"])  # our own reader object, never a file's bytes
    return _STATE["full"](Found(source), torch.from_numpy(view.view(np.float32)) if view is not None else None)
