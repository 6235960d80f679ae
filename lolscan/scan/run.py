"""What `lolscan predict` does between parsing its options and rendering its report: hold the output
lock, start reader processes early, open the checkpoint, resume from a JSONL output, stream every
adapter through the `Scorer`, apply the gates and collect the rows.

Nothing here prints: progress, streamed rows and rows that could not be scored reach the caller
through `PredictHooks`; errors are raised as `LolscanError` (a gate that names no target of the
checkpoint as `GateMismatch`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, UsageError, elide
from ..utils.files import atomic_write, read_jsonl
from .gates import apply_gates, check_gates
from .report import render


class GateMismatch(UsageError):
    """A ``--fail-under``/``--fail-over`` gate that does not fit the checkpoint's targets."""


def open_checkpoint(model: str | None, device: str) -> Any:
    """``--model NAME|PATH`` (or the default checkpoint) loaded onto the device."""
    from ..checkpoint import default_model, load_checkpoint, resolve
    from ..utils.device import resolve_device

    path = resolve(model) if model else default_model()
    return load_checkpoint(path, device=resolve_device(device))


def open_chosen(choice: Any, device: str) -> Any:
    """The bundled checkpoints of an `auto.Choice` loaded onto the device: a `Checkpoint`, a
    `CheckpointSet` of several, or None when no adapter fits any. Adapters the scan finds not fitting
    them are explained against all bundled checkpoints (the fit rule's ``auto``)."""
    from ..checkpoint import load_checkpoints
    from ..utils.device import resolve_device

    if not choice.chosen:
        return None
    ckpt = load_checkpoints([c.path for c in choice.chosen], device=resolve_device(device))
    ckpt.extra["auto"] = choice.auto()
    return ckpt


def model_info(ckpt: Any) -> dict[str, Any]:
    """The report's ``model``: the checkpoint's `info` (no checkpoint: no bundled one fits any adapter)."""
    if ckpt is None:
        return {"name": None, "path": None, "architecture": None, "base_model": None, "targets": []}
    return ckpt.info()


def read_done(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Rows already in a JSONL output, by source, and the byte length of its complete lines.

    A last line cut off by a crash (no newline, or not JSON) is not counted; the caller
    truncates the file to the returned length before appending.
    """
    rows, good = read_jsonl(path)
    return {row["source"]: row for row in rows if isinstance(row, dict) and isinstance(row.get("source"), str)}, good


def may_hold_many(targets: list[str]) -> bool:
    """Whether ``targets`` may name enough adapters for ``--procs auto`` to start reader processes,
    before the folders are walked: many targets, a glob, or a folder that is not one PEFT adapter."""
    from ..formats.peft_config import is_peft_folder

    if len(targets) >= 64:
        return True
    for t in targets:
        if any(c in t for c in "*?["):
            return True
        p = Path(t).expanduser()
        try:
            if p.is_dir() and not is_peft_folder(p):
                return True
        except OSError:
            continue
    return False


def early_readers(procs: str, targets: list[str]) -> Any:
    """A context manager holding the `ReaderPool` to start before the checkpoint loads (None when
    reading will likely use threads, or the processes could not be started: the scan starts its own)."""
    from .scoring import ReaderPool, auto_processes

    if procs == "auto":
        n = auto_processes(1 << 30) if may_hold_many(targets) else 0
    else:
        n = int(procs)
    if n <= 0:
        return nullcontext()
    try:
        return ReaderPool(n)
    except OSError:
        return nullcontext()


@contextmanager
def output_lock(output: Path | None) -> Iterator[None]:
    """Hold ``OUTPUT.lock`` (filelock) for the whole run: a second run writing the same --output
    (say two ``--resume`` runs at once, which would score every adapter twice) stops at once, exit 3."""
    if output is None:
        yield
        return
    from filelock import FileLock, Timeout

    lock_path = output.with_name(output.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path), timeout=0)
        lock.acquire()
    except Timeout:
        raise InputError(f"{elide(str(output))} is being written by another lolscan run (lock {elide(str(lock_path))} "
                         f"is held); wait for it to finish or choose another --output") from None
    except OSError as exc:
        raise InputError(f"cannot lock {elide(str(lock_path))}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        lock.release()


def _no_progress(total: int) -> AbstractContextManager[Callable[[], None]]:
    return nullcontext(lambda: None)


@dataclass
class PredictHooks:
    """How a run tells its caller what happens; every hook is optional.

    ``resumed(n_done, n_found)`` once when rows are taken from the --output JSONL; ``row(row)`` for
    each row as it comes (resumed ones first) when the options ask for ``live`` rows; ``problem(row,
    model_name)`` for a row that was not scored (status ``nonfinite`` or a failure), before it is
    streamed; ``progress(total)`` a context manager around the scoring giving an ``advance()``.
    """

    resumed: Callable[[int, int], None] = lambda done, found: None
    row: Callable[[dict[str, Any]], None] = lambda row: None
    problem: Callable[[dict[str, Any], str], None] = lambda row, model_name: None
    progress: Callable[[int], AbstractContextManager[Callable[[], None]]] = _no_progress


@dataclass
class PredictOptions:
    targets: list[str]
    model: str | None = None
    output: Path | None = None
    out_fmt: str | None = None  # the --output file's format (from its suffix)
    resume: bool = False
    gates: list[Any] = field(default_factory=list)
    live: bool = False  # rows go out one by one through hooks.row; only what the exit code needs is kept
    device: str = "auto"
    batch_size: int = 32
    workers: int = 2
    procs: str = "auto"
    threads: int | None = None
    allow_pickle: bool = False
    allow_nonfinite: bool = False
    follow_symlinks: bool = False
    source_options: Any = None
    engine: str = "local"  # "ray": the same scan as a Ray Data pipeline (`lolscan.scan.ray_engine`)
    ray: Any = None  # ray_engine.RayOptions for engine "ray" (None: its defaults)


@dataclass
class PredictResult:
    ckpt: Any
    rows: list[dict[str, Any]]  # in the order the targets were found, resumed rows included
    found: int  # adapters found
    out_of_domain: list[str]  # sources scored but unlike the checkpoint's training adapters


def predict(opts: PredictOptions, hooks: PredictHooks | None = None) -> PredictResult:
    """Score ``opts.targets``; a single-shot --output file (not JSONL) is written at the end.
    With ``opts.engine == "ray"`` the scan runs on Ray (`lolscan.scan.ray_engine.predict`)."""
    if opts.engine == "ray":
        from .ray_engine import predict as predict_on_ray

        return predict_on_ray(opts, hooks)
    if opts.engine != "local":
        raise UsageError(f"unknown engine {opts.engine!r} (local or ray)")
    import torch

    hooks = hooks or PredictHooks()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    # Reader processes start now and warm up while the checkpoint loads and the folder is walked;
    # they stop on the way out whatever happens (a checkpoint that fails to load included).
    with output_lock(opts.output), early_readers(opts.procs, opts.targets) as readers:
        from . import auto
        from .discovery import expand

        cands = [] if opts.model else auto.candidates()
        ckpt = None if cands else open_checkpoint(opts.model, opts.device)  # no bundled checkpoint: the only one installed
        if ckpt is not None:
            _check_gates(opts.gates, ckpt)
        found = expand(opts.targets, allow_pickle=opts.allow_pickle, follow_symlinks=opts.follow_symlinks)
        done, good = _resume_rows(opts)
        todo = [f for f in found if f.source not in done]
        probed: dict[str, dict[str, Any]] = {}
        if cands:  # every bundled checkpoint that fits the first adapter some bundled checkpoint fits
            choice = auto.choose(found, {f.source for f in todo}, opts.allow_pickle, dict(opts.source_options or {}), cands)
            probed = choice.rows
            ckpt = open_chosen(choice, opts.device)
            if ckpt is not None:
                _check_gates(opts.gates, ckpt)
        targets = ckpt.targets if ckpt is not None else []
        stream = _open_stream(opts, good)
        try:
            if done:
                hooks.resumed(len(found) - len(todo), len(found))
                if opts.live:  # the resumed rows go out first, then new ones as they are scored
                    for f in found:
                        if f.source in done:
                            apply_gates(done[f.source], opts.gates, targets)
                            hooks.row(done[f.source])
            new_rows, out_of_domain = _score(opts, hooks, ckpt, todo, readers, stream, probed)
        finally:
            if stream is not None:
                stream.close()
        rows = []
        for f in found:
            row = new_rows.get(f.source) or done.get(f.source)
            if row is not None:
                if f.source in done and f.source not in new_rows:
                    apply_gates(row, opts.gates, targets)  # gates of this run apply to resumed rows too
                rows.append(row)
        if opts.out_fmt not in (None, "jsonl"):
            assert opts.output is not None
            atomic_write(opts.output, render(opts.out_fmt, rows, model_info(ckpt), opts.gates, targets,
                                             allow_nonfinite=opts.allow_nonfinite))
    return PredictResult(ckpt=ckpt, rows=rows, found=len(found), out_of_domain=out_of_domain)


def _check_gates(gates: list[Any], ckpt: Any) -> None:
    try:
        check_gates(gates, ckpt.targets)
    except UsageError as exc:
        raise GateMismatch(str(exc)) from None


def _resume_rows(opts: PredictOptions) -> tuple[dict[str, dict[str, Any]], int]:
    """The rows to resume from (ok rows only: failures are retried) and the byte length of the JSONL
    output's complete lines (-1: no JSONL output to resume)."""
    if opts.out_fmt != "jsonl" or not opts.resume:
        return {}, -1
    assert opts.output is not None
    done, good = read_done(opts.output)
    return {k: v for k, v in done.items() if v.get("status") == "ok"}, good


def _open_stream(opts: PredictOptions, good: int) -> Any:
    """The JSONL output stream, if any: appended to after its ``good`` complete lines when resuming
    (a last line cut off by a crash is dropped), else written afresh."""
    if opts.out_fmt != "jsonl":
        return None
    assert opts.output is not None
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    if opts.resume and good >= 0:
        with open(opts.output, "ab") as fh:
            fh.truncate(good)
    return open(opts.output, "a" if opts.resume else "w", encoding="utf-8")


def _score(opts: PredictOptions, hooks: PredictHooks, ckpt: Any, todo: list[Any], readers: Any,
           stream: Any, probed: dict[str, dict[str, Any]] | None = None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Score ``todo``; ``probed`` holds final rows (by source) of adapters read already, which are not read again."""
    from itertools import chain

    from .report import jsonl_line
    from .scoring import ScoreOptions, Scorer, auto_processes

    probed = probed or {}
    rest = [f for f in todo if f.source not in probed]
    n_procs = auto_processes(len(rest)) if opts.procs == "auto" else int(opts.procs)
    if readers is not None and (readers.processes != n_procs or ckpt is None):  # auto guessed many files; there are few
        readers.close()
        readers = None
    score_opts = ScoreOptions(batch_size=opts.batch_size, workers=opts.workers, allow_pickle=opts.allow_pickle,
                              processes=n_procs, source_options=opts.source_options)
    new_rows: dict[str, dict[str, Any]] = {}
    out_of_domain: list[str] = []
    # Live rows with no single-shot file keep only what the exit code needs.
    keep_rows = not opts.live or opts.out_fmt not in (None, "jsonl")
    targets = ckpt.targets if ckpt is not None else []
    name = ckpt.name if ckpt is not None else ""
    # the probed rows come first: they are the adapters found before the first that a chosen checkpoint fits
    first = (probed[f.source] for f in todo if f.source in probed)
    scored = Scorer(ckpt, score_opts, readers=readers).score(rest) if ckpt is not None and rest else iter(())
    with hooks.progress(len(todo)) as advance:
        for row in chain(first, scored):
            apply_gates(row, opts.gates, targets)
            new_rows[row["source"]] = row if keep_rows else {
                "source": row["source"], "status": row["status"], "gates": [{"passed": g["passed"]} for g in row["gates"]]
            }
            if row["status"] != "ok":
                hooks.problem(row, name)
            elif (row.get("domain") or {}).get("in_domain") is False:
                out_of_domain.append(row["source"])
            if stream is not None:
                stream.write(jsonl_line(row))
                stream.flush()
            if opts.live:
                hooks.row(row)
            advance()
    return new_rows, out_of_domain
