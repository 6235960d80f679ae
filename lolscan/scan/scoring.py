"""Streaming scoring of many adapters: readers (threads, or processes with ``processes``) read files
while batches are scored.

Memory stays flat in the number of files: at most ``window`` adapters are in flight (being read
or queued) plus two batches (one being assembled while the one before it is scored, `lolscan.scan.stages`),
whatever the folder size. Rows come back in input order, one per
target, including the ones that could not be read (status ``error``) or that do not fit the
checkpoint (status ``incompatible``). Reader processes hand packed factors back through
shared-memory slots (`lolscan.scan.handoff`), not pickles.
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time
from collections import deque
from multiprocessing import resource_tracker
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ..adapter import Adapter
from ..checkpoint import Checkpoint, check_fits
from .discovery import Found
from ..errors import IncompatibleAdapter, LolscanError
from .handoff import DEFAULT_BUDGET, Arena, plan
from . import lightread
from .lightread import ArenaInfo, LightReader, read_in_process
from .lightread import base_row as _base_row
from .lightread import one_line as _one_line
from .packing import InSlot, Packed, pack, slot_views, stack  # noqa: F401 - public here too
from .stages import Stages
from .labels import LABELS_FILE, METADATA_LABELS_KEY, LabelFiles, known_labels  # noqa: F401 - re-exported



@dataclass
class ScoreOptions:
    batch_size: int = 32
    workers: int = 2  # reader threads (parsing holds the GIL, so more rarely help)
    allow_pickle: bool = False
    window: int | None = None  # adapters in flight; default 2 × batch_size + workers (+ processes)
    processes: int = 0  # > 0: parse files in this many processes (scales past the GIL on many cores)
    source_options: dict[str, Any] = field(default_factory=dict)  # for lolscan.load (offline, tokens)
    start_method: str = "auto"  # reader processes: fork, forkserver or spawn; auto: see `start_method`
    torch_threads: int | None = None  # intra-op threads while scoring; default: the cores the readers leave
    shm_budget: int = DEFAULT_BUDGET  # bytes of shared memory for the hand-off from reader processes; 0: pickle


@dataclass
class _Item:
    found: Found
    row: dict[str, Any]
    packed: Packed | InSlot | None = None
    slot: int | None = None  # shared-memory slot lent to this item's read, returned after scoring


def true_labels(adapter: Adapter, source: str, label_files: LabelFiles) -> dict[str, Any]:
    """Known labels of an adapter: adapter metadata ``lolscan_labels`` (JSON), then ``labels.json``."""
    st = adapter.metadata.get("safetensors") if isinstance(adapter.metadata, dict) else None
    return known_labels(st, source, label_files)


def fill_truth(row: dict[str, Any], targets: Iterable[Any], labels: dict[str, Any]) -> None:
    """A row's ``truth``: each target's known label, decoded as the target reads labels when it can. A count
    takes its own column's number as it is, else counts its source column's label set."""
    for t in targets:
        if t.kind == "count" and t.name in labels:  # the number itself (an int where it is whole)
            v = labels[t.name]
            try:
                f = float(v)
                row["truth"][t.name] = int(f) if f.is_integer() else f
            except (TypeError, ValueError):
                row["truth"][t.name] = v
        elif t.column in labels:
            try:
                row["truth"][t.name] = t.true_values([labels[t.column]])[0]
            except LolscanError:
                row["truth"][t.name] = labels[t.column]


def read_adapter(source: str, allow_pickle: bool, source_options: dict[str, Any]) -> tuple[dict[str, Any], Adapter | None]:
    """``lolscan.load(source)`` and the row that says so: (row with format, rank and layers, the adapter),
    or (an error row, None) when it cannot be read."""
    import lolscan

    row = _base_row(source)
    try:
        adapter = lolscan.load(source, allow_pickle=allow_pickle, **source_options)
    except LolscanError as exc:
        row.update(status="error", error=_one_line(exc, source))
        return row, None
    except Exception as exc:  # a reader bug must not take down the other files
        row.update(status="error", error=f"unexpected {type(exc).__name__}: {_one_line(exc, source)}")
        return row, None
    row["format"] = adapter.format
    row["rank"] = sorted(set(adapter.ranks))
    row["layers"] = len(adapter)
    return row, adapter


class _Reader:
    """Reads, checks and packs one adapter. Picklable, so reader processes can run it too."""

    def __init__(self, rule: dict[str, Any], targets: list[dict[str, Any]], allow_pickle: bool, source_options: dict[str, Any], as_numpy: bool):
        self.rule, self.targets_json = rule, targets
        self.allow_pickle, self.source_options, self.as_numpy = allow_pickle, source_options, as_numpy
        self._spec: Any = None
        self._targets: list[Any] | None = None
        self._labels = LabelFiles()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_spec", "_targets", "_labels")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._spec, self._targets, self._labels = None, None, LabelFiles()

    def __call__(self, found: Found, slot: torch.Tensor | None = None) -> _Item:
        """Read ``found``; with ``slot`` (shared memory) the factors are packed into it when they fit."""
        from ..nets import LayerSpec
        from ..targets import Target

        if self._spec is None:
            self._spec = LayerSpec.from_json(self.rule["spec"])
            self._targets = [Target.from_json(t) for t in self.targets_json]
        row, adapter = read_adapter(found.source, self.allow_pickle, self.source_options)
        if adapter is None:
            return _Item(found, row)
        try:
            check_fits(adapter, self._spec, self.rule)
        except IncompatibleAdapter as exc:
            error = _one_line(exc, found.source)
            if "auto" in self.rule:  # the checkpoints were chosen among the bundled ones: say what fits it, if any
                from .auto import misfit_message

                error = misfit_message(adapter, self.rule["auto"])
            row.update(status="incompatible", error=error)
            return _Item(found, row)
        if adapter.nonfinite:  # NaN/Inf factors: a prediction would be meaningless, never "ok"
            row.update(status="nonfinite", error=lightread.nonfinite_message(adapter.nonfinite))
            return _Item(found, row)
        fill_truth(row, self._targets or (), true_labels(adapter, found.source, self._labels))
        if slot is not None:
            in_slot = pack(adapter, self._spec, slot)
            if in_slot is not None:  # only the true ranks travel; the factors stay in the slot
                return _Item(found, row, InSlot([k.tolist() for _, _, k in in_slot]))
        packed = pack(adapter, self._spec)
        assert packed is not None
        if self.as_numpy:  # plain pickling across processes (no shared-memory file descriptors)
            packed = [tuple(x.numpy() for x in group) for group in packed]
        return _Item(found, row, packed)


def auto_processes(n_files: int) -> int:
    """Reader processes for ``--procs auto``: parsing is Python-bound, so past a couple of cores
    processes scale where threads cannot; small jobs and small machines keep threads. With the
    shared-memory hand-off the scoring process stays light, so all cores but two read."""
    cpus = os.cpu_count() or 1
    return 0 if cpus < 4 or n_files < 64 else min(cpus - 2, 16)


def start_method(wanted: str = "auto") -> str:
    """How reader processes start. auto: fork (cheap) while CUDA is untouched; after that a fork
    server, a clean interpreter that imports the torch-free `lolscan.scan.lightread` once and then forks
    the readers (spawning each reader costs each its own imports). Readers started by a fork server
    or spawned re-import the ``__main__`` script (Python does): keep heavy imports out of its top level."""
    if wanted != "auto":
        return wanted
    if os.name != "posix":
        return "spawn"
    if not torch.cuda.is_initialized():
        return "fork"
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["lolscan.scan.lightread"])  # numpy, not torch: readers start in a fraction of a second
    return "forkserver"


class ReaderPool:
    """Reader processes started ahead of the scan, so that their start-up (forks, a fork server's
    imports) overlaps loading the checkpoint and walking the folder; `Scorer.score` hands them the
    checkpoint's readers (`configure`) and shuts them down when the scan ends. One scan per pool.

    Close it (or use it as a context manager) when no scan follows, e.g. the checkpoint failed to
    load: the processes stop and nothing else is left behind (shared memory belongs to the scan).
    """

    def __init__(self, processes: int, method: str = "auto"):
        if processes < 1:
            raise ValueError(f"reader processes: {processes} (want at least 1)")
        self.processes = processes
        self.method = start_method(method)
        ctx = multiprocessing.get_context(self.method)
        # The resource tracker must run before readers fork: one forked first would start its own on
        # attaching the arena, and that one would unlink the segment again, with a warning, at exit.
        resource_tracker.ensure_running()
        self._configs = ctx.Queue()  # one copy of the readers per process, taken on its first read
        self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(processes, mp_context=ctx, initializer=lightread.start_worker,
                                                                     initargs=(self._configs,))
        self._configured = False
        self._launcher: threading.Thread | None = None
        if self.method == "fork":  # forked now, from this thread: a fork from another thread could copy a half-done import
            self._launch()
        else:  # a fork server starts and preloads in the background; launching waits for it, so not here
            self._launcher = threading.Thread(target=self._launch, name="lolscan-readers-start", daemon=True)
            self._launcher.start()

    def _launch(self) -> None:
        pool = self._pool
        if pool is None:
            return
        try:
            for _ in range(self.processes):  # each submit starts a process while none is idle (fork: all at once)
                pool.submit(lightread.warm)
        except RuntimeError:  # closed meanwhile
            pass

    def configure(self, light: LightReader, full_reader: bytes, arena: ArenaInfo | None) -> None:
        """The readers of one checkpoint (and its shared-memory arena), for every process."""
        if self._configured or self._pool is None:
            raise RuntimeError("a ReaderPool serves one scan")
        self._configured = True
        for _ in range(self.processes):
            self._configs.put((light, full_reader, arena))

    def submit(self, fn: Any, /, *args: Any) -> Future[Any]:
        assert self._pool is not None and self._configured, "configure the pool first"
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        """Stop the processes: wait for reads in progress (they may use a slot), drop queued ones."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._launcher is not None:
            self._launcher.join()
        pool.shutdown(wait=True, cancel_futures=True)
        self._configs.cancel_join_thread()  # copies no process took stay unread
        self._configs.close()

    def __enter__(self) -> ReaderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Scorer:
    """Scores `Found` adapters against one checkpoint; see `score`."""

    def __init__(self, ckpt: Checkpoint, opts: ScoreOptions | None = None, readers: ReaderPool | None = None):
        """``readers``: reader processes started ahead (`ReaderPool`, as many as ``opts.processes``);
        the next `score` uses them and shuts them down."""
        self.ckpt = ckpt
        self.opts = opts or ScoreOptions()
        if readers is not None and readers.processes != self.opts.processes:
            raise ValueError(f"{readers.processes} reader processes started, options want {self.opts.processes}")
        self._readers = readers
        self._dtype = next(iter(ckpt.model.parameters())).dtype
        self._arena: Arena | None = None
        self.handoff = "in process"  # how factors reach the scoring thread (bench and logs)
        # Seconds per stage: open, wait (for readers) and retire (for a scored batch) on the main thread;
        # assemble and predict on their own threads (they overlap each other and the main thread).
        self.timings: dict[str, float] = {"open": 0.0, "wait": 0.0, "retire": 0.0, "assemble": 0.0, "predict": 0.0}

    def prestart(self) -> None:
        """Start the reader processes now (with ``processes`` > 0), so that they are ready when
        `score` is called; `close` stops them should no scan follow."""
        if self.opts.processes > 0 and self._readers is None:
            self._readers = ReaderPool(self.opts.processes, self.opts.start_method)

    def close(self) -> None:
        """Stop reader processes started ahead and not used by a scan."""
        readers, self._readers = self._readers, None
        if readers is not None:
            readers.close()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reader(self) -> _Reader:
        targets = [t.to_json() for t in self.ckpt.targets]
        return _Reader(self.ckpt.fit_rule(), targets, self.opts.allow_pickle, dict(self.opts.source_options), self.opts.processes > 0)

    def _pool(self, reader: _Reader) -> tuple[Any, Any]:
        """Reader processes run `lightread.read_in_process` (torch-free; ``reader`` where it declines),
        called with a source and a slot; reader threads run ``reader`` itself, called with a `Found`."""
        if self.opts.processes > 0:
            pool, self._readers = self._readers, None
            if pool is None:
                pool = ReaderPool(self.opts.processes, self.opts.start_method)
            try:
                info = self._arena.info if self._arena is not None else None
                light = LightReader(self.ckpt.fit_rule(), [t.name for t in self.ckpt.targets])
                pool.configure(light, pickle.dumps(reader), info)
            except BaseException:
                pool.close()
                raise
            return pool, read_in_process
        return ThreadPoolExecutor(max_workers=max(1, self.opts.workers), thread_name_prefix="lolscan-read"), reader

    def _open_arena(self, slots: int) -> None:
        """Shared-memory slots for reader processes (none when shared memory is short or disabled)."""
        floats = plan(self.ckpt.spec, slots, budget=self.opts.shm_budget) if self.opts.processes > 0 and self.opts.shm_budget > 0 else 0
        if floats:
            self._arena = Arena.create(slots, floats)
            self.handoff = f"shared memory, {slots} slots of {4 * floats / 1e6:.1f} MB"
        elif self.opts.processes > 0:
            self.handoff = "pickle"

    def _close_arena(self) -> None:
        if self._arena is not None:
            self._arena.close()
            self._arena = None

    def score(self, found: Iterable[Found]) -> Iterator[dict[str, Any]]:
        """One row per item of `found`, in order. Reading overlaps scoring."""
        bs = max(1, self.opts.batch_size)
        window = self.opts.window or 2 * bs + max(self.opts.workers, 2 * self.opts.processes)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(self._threads(threads))
            t0 = time.perf_counter()
            self._open_arena(window + 2 * bs)  # every item alive at once holds at most one slot
            self.timings["open"] += time.perf_counter() - t0
            yield from self._score(found, bs, window)
        finally:
            self._close_arena()
            torch.set_num_threads(threads)

    def _threads(self, current: int) -> int:
        """Torch threads while scoring: OpenMP threads that share their cores with busy readers
        spin and stall (batches 5-10x slower on 2 busy cores), so leave the readers theirs."""
        if self.opts.torch_threads:
            return self.opts.torch_threads
        readers = self.opts.processes or max(1, self.opts.workers)
        return max(1, min(current, (os.cpu_count() or 1) - readers))

    def _score(self, found: Iterable[Found], bs: int, window: int) -> Iterator[dict[str, Any]]:
        source = iter(found)
        free = deque(range(self._arena.info.slots)) if self._arena is not None else deque()
        pool, read = self._pool(self._reader())
        pending: deque[Future[_Item] | _Item] = deque()
        stages = Stages(self.ckpt, self._dtype, lambda i: self._arena.slot(i), self.timings)
        flight: deque[tuple[list[_Item], Future[None]]] = deque()  # batches in the stages, oldest first
        with pool:  # a ReaderPool or a ThreadPoolExecutor: shut down when the scan ends

            def fill() -> None:
                while len(pending) < window:
                    f = next(source, None)
                    if f is None:
                        return
                    if f.error:
                        row = _base_row(f.source)
                        row.update(status="error", error=f.error)
                        pending.append(_Item(f, row))
                    elif self.opts.processes > 0:
                        slot = free.popleft() if free else None
                        pending.append(_FromProcess(pool.submit(read, f.source, slot), f, slot, self.ckpt.targets))
                    else:
                        pending.append(pool.submit(read, f))

            def retire() -> Iterator[dict[str, Any]]:
                items, scored = flight.popleft()
                t0 = time.perf_counter()
                scored.result()
                self.timings["retire"] += time.perf_counter() - t0
                for it in items:
                    if it.slot is not None:
                        free.append(it.slot)
                        it.slot = None
                fill()
                yield from (it.row for it in items)

            def done(items: list[_Item]) -> Iterator[dict[str, Any]]:
                """Hand a full batch to the stages; then wait for the one before it (scored while this
                one was assembled), so at most two batches hold factors and buffers at once."""
                flight.append((items, stages.submit(items)))
                if len(flight) > 1:
                    yield from retire()

            try:
                fill()
                if self._arena is not None and self.ckpt.device.type == "cuda":
                    t0 = time.perf_counter()  # page-locking overlaps the readers' start-up
                    self.handoff += ", page-locked" if self._arena.pin() else ", not page-locked"
                    self.timings["open"] += time.perf_counter() - t0
                batch: list[_Item] = []
                n_adapters = 0
                while pending:
                    head = pending.popleft()
                    t0 = time.perf_counter()
                    item = head.result() if isinstance(head, (Future, _FromProcess)) else head
                    self.timings["wait"] += time.perf_counter() - t0
                    if item.packed is None and item.slot is not None:  # nothing to score: its slot is free now
                        free.append(item.slot)
                        item.slot = None
                    fill()
                    batch.append(item)
                    n_adapters += item.packed is not None
                    if n_adapters >= bs or len(batch) >= 2 * bs or not pending:
                        yield from done(batch)
                        batch, n_adapters = [], 0
                if batch:
                    yield from done(batch)
                while flight:
                    yield from retire()
            finally:  # stopped early: drop what is queued, wait for what runs (it may use a slot)
                stages.close()
                if isinstance(pool, ReaderPool):
                    pool.close()
                else:
                    pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _FromProcess:
    """A read submitted to a reader process (`lightread.read_in_process`), lent ``slot`` if not None."""

    future: Future[tuple[str, Any]]
    found: Found
    slot: int | None
    targets: list[Any]

    def result(self) -> _Item:
        kind, got = self.future.result()
        if kind == "full":  # the full reader's item
            item = got
            item.found = self.found
        else:  # the light reader's (row, InSlot or None, labels)
            row, written, labels = got
            fill_truth(row, self.targets, labels)
            item = _Item(self.found, row, written)
        item.slot = self.slot
        return item
