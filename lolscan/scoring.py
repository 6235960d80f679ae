"""Streaming scoring of many adapters: a small thread pool reads files while batches are scored.

Memory stays flat in the number of files: at most ``window`` adapters are in flight (being read
or queued) plus one batch being assembled, whatever the folder size. Rows come back in input order, one per
target, including the ones that could not be read (status ``error``) or that do not fit the
checkpoint (status ``incompatible``).
"""
from __future__ import annotations

import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .adapter import Adapter
from .checkpoint import Checkpoint, check_fits
from .discovery import Found
from .errors import IncompatibleAdapter, LolscanError
from .manifest import is_uri

LABELS_FILE = "labels.json"
METADATA_LABELS_KEY = "lolscan_labels"


@dataclass
class ScoreOptions:
    batch_size: int = 32
    workers: int = 2  # reader threads (parsing holds the GIL, so more rarely help)
    allow_pickle: bool = False
    window: int | None = None  # adapters in flight; default 2 × batch_size + workers (+ processes)
    processes: int = 0  # > 0: parse files in this many processes (scales past the GIL on many cores)
    source_options: dict[str, Any] = field(default_factory=dict)  # for lolscan.load (offline, tokens)


# One adapter laid out for the checkpoint's spec: per shape group (U [L_g, n, r], V [L_g, m, r],
# true ranks [L_g]); r is this adapter's largest rank in the group. Stacking these is `collate`.
Packed = list[tuple[Any, Any, Any]]


@dataclass
class _Item:
    found: Found
    row: dict[str, Any]
    packed: Packed | None = None


def _base_row(source: str) -> dict[str, Any]:
    return {"source": source, "status": "ok", "error": None, "predictions": {}, "truth": {}, "gates": []}


def _one_line(exc: BaseException, source: str) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    prefix = f"{source}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


class _LabelFiles:
    """``labels.json`` files next to adapters, read once per folder: {name: {target: value}}."""

    def __init__(self) -> None:
        self._cache: dict[Path, dict[str, Any]] = {}

    def lookup(self, source: str) -> dict[str, Any]:
        if is_uri(source):
            return {}
        p = Path(source)
        folder = p.parent
        if folder not in self._cache:
            data: dict[str, Any] = {}
            f = folder / LABELS_FILE
            if f.is_file():
                try:
                    loaded = json.loads(f.read_text(encoding="utf-8"))
                    data = loaded if isinstance(loaded, dict) else {}
                except (OSError, ValueError):
                    data = {}
            self._cache[folder] = data
        table = self._cache[folder]
        for key in (p.name, p.stem):
            if isinstance(table.get(key), dict):
                return table[key]
        return {}


def true_labels(adapter: Adapter, source: str, label_files: _LabelFiles) -> dict[str, Any]:
    """Known labels of an adapter: adapter metadata ``lolscan_labels`` (JSON), then ``labels.json``."""
    out: dict[str, Any] = {}
    st = adapter.metadata.get("safetensors") if isinstance(adapter.metadata, dict) else None
    raw = (st or {}).get(METADATA_LABELS_KEY) if isinstance(st, dict) else None
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
            if isinstance(parsed, dict):
                out.update(parsed)
        except ValueError:
            pass
    out.update(label_files.lookup(source))
    return out


def pack(adapter: Adapter, spec: Any) -> Packed:
    """Lay one adapter out per shape group (zero rank padding and zero absent modules, as `collate`)."""
    out: Packed = []
    for g in spec.groups:
        layers = [adapter.layers.get(spec[i].name) for i in g.indices]
        r = max((layer.rank for layer in layers if layer is not None), default=0) or 1
        if all(layer is not None and layer.rank == r for layer in layers):  # the common case: one op each
            U = torch.stack([layer.U for layer in layers]).float()
            V = torch.stack([layer.V for layer in layers]).float()
            out.append((U, V, torch.full((len(layers),), r, dtype=torch.long)))
            continue
        U = torch.zeros(len(layers), g.n, r)
        V = torch.zeros(len(layers), g.m, r)
        ranks = torch.zeros(len(layers), dtype=torch.long)
        for j, layer in enumerate(layers):
            if layer is not None and layer.rank:
                U[j, :, : layer.rank] = layer.U
                V[j, :, : layer.rank] = layer.V
                ranks[j] = layer.rank
        out.append((U, V, ranks))
    return out


def stack(packs: list[Packed], spec: Any, sources: list[str], device: torch.device, dtype: torch.dtype = torch.float32) -> Any:
    """Packed adapters -> the `FactorBatch` that `lolscan.nets.collate` would build from them."""
    from .nets import FactorBatch, FactorGroup

    groups = []
    for gi, g in enumerate(spec.groups):
        parts = [[torch.as_tensor(x) for x in p[gi]] for p in packs]
        r = max(u.shape[-1] for u, _, _ in parts)
        L = len(g.indices)
        ranks = torch.stack([k for _, _, k in parts])
        if all(u.shape[-1] == r for u, _, _ in parts):  # one rank: one stack, one transfer per tensor
            U = torch.stack([u for u, _, _ in parts]).to(device=device, dtype=dtype)
            V = torch.stack([v for _, v, _ in parts]).to(device=device, dtype=dtype)
        else:  # zero-pad ranks on the target device: the rank-strided copies are fast there, slow on the host
            U = torch.zeros((len(packs), L, g.n, r), dtype=dtype, device=device)
            V = torch.zeros((len(packs), L, g.m, r), dtype=dtype, device=device)
            for b, (u, v, _) in enumerate(parts):
                U[b, :, :, : u.shape[-1]] = u.to(device)
                V[b, :, :, : v.shape[-1]] = v.to(device)
        groups.append(FactorGroup(g.n, g.m, g.indices, U, V, ranks))
    return FactorBatch(spec, groups, list(sources))


class _Reader:
    """Reads, checks and packs one adapter. Picklable, so reader processes can run it too."""

    def __init__(self, rule: dict[str, Any], targets: list[dict[str, Any]], allow_pickle: bool, source_options: dict[str, Any], as_numpy: bool):
        self.rule, self.targets_json = rule, targets
        self.allow_pickle, self.source_options, self.as_numpy = allow_pickle, source_options, as_numpy
        self._spec: Any = None
        self._targets: list[Any] | None = None
        self._labels = _LabelFiles()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_spec", "_targets", "_labels")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._spec, self._targets, self._labels = None, None, _LabelFiles()

    def __call__(self, found: Found) -> _Item:
        import lolscan

        from .nets import LayerSpec
        from .targets import Target

        if self._spec is None:
            self._spec = LayerSpec.from_json(self.rule["spec"])
            self._targets = [Target.from_json(t) for t in self.targets_json]
        row = _base_row(found.source)
        try:
            adapter = lolscan.load(found.source, allow_pickle=self.allow_pickle, **self.source_options)
        except LolscanError as exc:
            row.update(status="error", error=_one_line(exc, found.source))
            return _Item(found, row)
        except Exception as exc:  # a reader bug must not take down the other files
            row.update(status="error", error=f"unexpected {type(exc).__name__}: {_one_line(exc, found.source)}")
            return _Item(found, row)
        row["format"] = adapter.format
        row["rank"] = sorted(set(adapter.ranks))
        row["layers"] = len(adapter)
        try:
            check_fits(adapter, self._spec, self.rule)
        except IncompatibleAdapter as exc:
            row.update(status="incompatible", error=_one_line(exc, found.source))
            return _Item(found, row)
        labels = true_labels(adapter, found.source, self._labels)
        for t in self._targets or ():
            if t.name in labels:
                try:
                    row["truth"][t.name] = t.true_values([labels[t.name]])[0]
                except LolscanError:
                    row["truth"][t.name] = labels[t.name]
        packed = pack(adapter, self._spec)
        if self.as_numpy:  # plain pickling across processes (no shared-memory file descriptors)
            packed = [tuple(x.numpy() for x in group) for group in packed]
        return _Item(found, row, packed)


def auto_processes(n_files: int) -> int:
    """Reader processes for ``--procs auto``: parsing is Python-bound, so past a couple of cores
    processes scale where threads cannot; small jobs and small machines keep threads."""
    cpus = os.cpu_count() or 1
    return 0 if cpus < 4 or n_files < 64 else min(cpus - 2, 8)


_PROCESS_READER: _Reader | None = None


def _worker_init(reader: _Reader) -> None:
    """Reader processes get the reader once, not pickled with every file."""
    global _PROCESS_READER
    torch.set_num_threads(1)
    _PROCESS_READER = reader


def _process_read(found: Found) -> _Item:
    assert _PROCESS_READER is not None
    return _PROCESS_READER(found)


class Scorer:
    """Scores `Found` adapters against one checkpoint; see `score`."""

    def __init__(self, ckpt: Checkpoint, opts: ScoreOptions | None = None):
        self.ckpt = ckpt
        self.opts = opts or ScoreOptions()
        self._dtype = next(iter(ckpt.model.parameters())).dtype

    def _reader(self) -> _Reader:
        targets = [t.to_json() for t in self.ckpt.targets]
        return _Reader(self.ckpt.fit_rule(), targets, self.opts.allow_pickle, dict(self.opts.source_options), self.opts.processes > 0)

    def _pool(self, reader: _Reader) -> tuple[Executor, Any]:
        if self.opts.processes > 0:
            # fork is cheap and fine while CUDA is untouched; otherwise start clean interpreters.
            method = "fork" if os.name == "posix" and not torch.cuda.is_initialized() else "spawn"
            pool = ProcessPoolExecutor(
                self.opts.processes, mp_context=multiprocessing.get_context(method), initializer=_worker_init, initargs=(reader,)
            )
            return pool, _process_read
        return ThreadPoolExecutor(max_workers=max(1, self.opts.workers), thread_name_prefix="lolscan-read"), reader

    def _score_batch(self, items: list[_Item]) -> None:
        todo = [it for it in items if it.packed is not None]
        if not todo:
            return
        spec, device = self.ckpt.spec, self.ckpt.device

        def run(group: list[_Item]) -> list[dict[str, Any]]:
            batch = stack([it.packed for it in group], spec, [it.found.source for it in group], device, self._dtype)
            return self.ckpt.predict(batch)

        try:
            preds: list[dict[str, Any] | None] = list(run(todo))
        except Exception:  # isolate the adapter that breaks the batch
            preds = []
            for it in todo:
                try:
                    preds.append(run([it])[0])
                except Exception as exc:
                    it.row.update(status="error", error=f"scoring failed: {_one_line(exc, it.found.source)}")
                    preds.append(None)
        for it, p in zip(todo, preds):
            if p is not None:
                it.row["predictions"] = p
            it.packed = None  # release the factors

    def score(self, found: Iterable[Found]) -> Iterator[dict[str, Any]]:
        """One row per item of `found`, in order. Reading overlaps scoring."""
        bs = max(1, self.opts.batch_size)
        window = self.opts.window or 2 * bs + max(self.opts.workers, 2 * self.opts.processes)
        source = iter(found)
        pool, read = self._pool(self._reader())
        pending: deque[Future[_Item] | _Item] = deque()
        with pool:

            def fill() -> None:
                while len(pending) < window:
                    f = next(source, None)
                    if f is None:
                        return
                    if f.error:
                        row = _base_row(f.source)
                        row.update(status="error", error=f.error)
                        pending.append(_Item(f, row))
                    else:
                        pending.append(pool.submit(read, f))

            fill()
            batch: list[_Item] = []
            n_adapters = 0
            while pending:
                head = pending.popleft()
                item = head.result() if isinstance(head, Future) else head
                fill()
                batch.append(item)
                n_adapters += item.packed is not None
                if n_adapters >= bs or len(batch) >= 2 * bs or not pending:
                    self._score_batch(batch)
                    yield from (it.row for it in batch)
                    batch, n_adapters = [], 0
            if batch:
                self._score_batch(batch)
                yield from (it.row for it in batch)
