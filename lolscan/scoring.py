"""Streaming scoring of many adapters: a small thread pool reads files while batches are scored.

Memory stays flat in the number of files: at most ``window`` adapters are in flight (being read
or queued) plus one batch being assembled, whatever the folder size. Rows come back in input order, one per
target, including the ones that could not be read (status ``error``) or that do not fit the
checkpoint (status ``incompatible``).
"""
from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .adapter import Adapter
from .checkpoint import Checkpoint
from .discovery import Found
from .errors import IncompatibleAdapter, LolscanError
from .manifest import is_uri

LABELS_FILE = "labels.json"
METADATA_LABELS_KEY = "lolscan_labels"


@dataclass
class ScoreOptions:
    batch_size: int = 32
    workers: int = 4
    allow_pickle: bool = False
    window: int | None = None  # adapters in flight; default 2 × batch_size + workers
    source_options: dict[str, Any] = field(default_factory=dict)  # for lolscan.load (offline, tokens)


@dataclass
class _Item:
    found: Found
    row: dict[str, Any]
    adapter: Adapter | None = None


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


class Scorer:
    """Scores `Found` adapters against one checkpoint; see `score`."""

    def __init__(self, ckpt: Checkpoint, opts: ScoreOptions | None = None):
        self.ckpt = ckpt
        self.opts = opts or ScoreOptions()
        self._labels = _LabelFiles()

    def _read(self, found: Found) -> _Item:
        import lolscan

        row = _base_row(found.source)
        try:
            adapter = lolscan.load(found.source, allow_pickle=self.opts.allow_pickle, **self.opts.source_options)
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
            self.ckpt.require_fits(adapter)
        except IncompatibleAdapter as exc:
            row.update(status="incompatible", error=_one_line(exc, found.source))
            return _Item(found, row)
        labels = true_labels(adapter, found.source, self._labels)
        for t in self.ckpt.targets:
            if t.name in labels:
                try:
                    row["truth"][t.name] = t.true_values([labels[t.name]])[0]
                except LolscanError:
                    row["truth"][t.name] = labels[t.name]
        return _Item(found, row, adapter)

    def _score_batch(self, items: list[_Item]) -> None:
        todo = [it for it in items if it.adapter is not None]
        if not todo:
            return
        try:
            preds = self.ckpt.predict([it.adapter for it in todo])
        except Exception:  # isolate the adapter that breaks the batch
            preds = []
            for it in todo:
                try:
                    preds.append(self.ckpt.predict([it.adapter])[0])
                except Exception as exc:
                    it.row.update(status="error", error=f"scoring failed: {_one_line(exc, it.found.source)}")
                    preds.append(None)
        for it, p in zip(todo, preds):
            if p is not None:
                it.row["predictions"] = p
            it.adapter = None  # release the factors

    def score(self, found: Iterable[Found]) -> Iterator[dict[str, Any]]:
        """One row per item of `found`, in order. Reading overlaps scoring."""
        bs = max(1, self.opts.batch_size)
        window = self.opts.window or 2 * bs + self.opts.workers
        source = iter(found)
        pending: deque[Future[_Item] | _Item] = deque()
        with ThreadPoolExecutor(max_workers=max(1, self.opts.workers), thread_name_prefix="lolscan-read") as pool:

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
                        pending.append(pool.submit(self._read, f))

            fill()
            batch: list[_Item] = []
            n_adapters = 0
            while pending:
                head = pending.popleft()
                item = head.result() if isinstance(head, Future) else head
                fill()
                batch.append(item)
                n_adapters += item.adapter is not None
                if n_adapters >= bs or len(batch) >= 2 * bs or not pending:
                    self._score_batch(batch)
                    yield from (it.row for it in batch)
                    batch, n_adapters = [], 0
            if batch:
                self._score_batch(batch)
                yield from (it.row for it in batch)
