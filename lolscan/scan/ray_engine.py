"""`lolscan predict --engine ray`: the local scan's discovery, readers, `Scorer` stages and row schema,
run as a Ray Data pipeline so that a hub of 10⁵–10⁶ adapters can be scanned on a cluster.

    list (driver: `discovery.expand`, minus the sources already in the output)
      → read and canonicalise (Ray tasks, CPU: `lightread.LightReader`, else the full `scoring._Reader`,
        packing each adapter into the layout of a shared-memory slot; no torch in the common case)
      → batch → score (Ray actors, one checkpoint each, on a GPU where there is one: `stages.Stages`)
      → write (driver: JSONL or Parquet shards, each written whole under a temporary name and renamed)

The driver is the only writer. Ray Data hands it the output of each task exactly once, from the attempt
that succeeded, so a worker killed mid-task (its task retried, an actor restarted) neither loses a row
nor writes one twice, and a shard appears whole or not at all. Resume reads the shards already in the
folder and skips their sources (rows that were not scored are dropped from their shards and retried),
as the local scan's ``--resume`` does with its JSONL file.

Ray is an optional dependency (``pip install "lolscan[ray]"``), imported only here and only when used.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MissingExtras, UsageError, elide
from ..utils.files import atomic_write, read_jsonl
from .run import PredictHooks, PredictOptions, PredictResult, output_lock

SHARD_FORMATS = ("jsonl", "parquet")
INSTALL = 'pip install "lolscan[ray]"'
_PARQUET_SCALARS = ("schema_version", "source", "status", "error", "format", "rank", "layers")  # typed columns


@dataclass
class RayOptions:
    """How the Ray pipeline runs (the scan itself is `PredictOptions`)."""

    address: str | None = None  # a running cluster ("auto", "ray://host:10001"); None: RAY_ADDRESS or a local instance
    num_cpus: int | None = None  # CPUs of a local instance started here (None: all)
    scorers: int | None = None  # scoring actors; default: one per GPU with --device cuda, else 1
    read_batch: int = 32  # adapters per read task batch
    read_calls: int = 1000  # read tasks a worker runs before Ray replaces it
    shard_rows: int = 4096  # rows per output shard (a shard is also written after shard_seconds)
    shard_seconds: float = 60.0
    # Called in the workers with the sources of each read task / scoring batch (fault injection in
    # the tests, tracing). A task whose worker dies is retried (Ray Data: without limit); an actor that
    # dies is restarted and its batch retried (Ray Data's default).
    before_read: Callable[[list[str]], None] | None = None
    before_score: Callable[[list[str]], None] | None = None
    init_kwargs: dict[str, Any] = field(default_factory=dict)  # more ray.init arguments for a local instance


def require_ray() -> Any:
    """The ray module, or `MissingExtras` (exit 3, as every missing optional package) naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data needs the ray[data] extra (pyarrow, pandas)
    except ImportError as exc:
        raise MissingExtras(f"--engine ray needs Ray Data ({exc.name or 'ray'} is not installed): {INSTALL}") from None
    return ray


# ---- the output folder ---------------------------------------------------------------------------
def shard_folder(output: Path, fmt: str) -> Path:
    """``--output NAME.jsonl`` / ``NAME.parquet`` with Ray is a folder of shards of that format."""
    if fmt not in SHARD_FORMATS:
        raise UsageError(f"shards are {' or '.join(SHARD_FORMATS)}, not {fmt}")
    if output.exists() and not output.is_dir():
        raise UsageError(f"{elide(str(output))} is a file; with --engine ray, --output {output.suffix} names a folder "
                         "of shards: choose a new name")
    return output


def shards(folder: Path, fmt: str) -> list[Path]:
    """The complete shards in ``folder`` (temporary files of an interrupted write are not shards)."""
    return sorted(p for p in folder.glob(f"part-*.{fmt}") if p.is_file())


def _parquet_schema(keys: list[str]) -> Any:
    """Fixed column types, so that every shard has the same schema whatever its rows hold: the scalar
    columns typed, the nested ones (predictions, truth, gates, domain and any other) as JSON text."""
    import pyarrow as pa

    typed = {"schema_version": pa.int64(), "source": pa.string(), "status": pa.string(), "error": pa.string(),
             "format": pa.string(), "rank": pa.list_(pa.int64()), "layers": pa.int64()}
    return pa.schema([(k, typed.get(k, pa.string())) for k in keys])


def to_record(row: dict[str, Any]) -> dict[str, Any]:
    """A row as a Parquet record: its scalar columns as they are, the others as JSON text."""
    from .report import jsonl_line

    full = json.loads(jsonl_line(row))
    return {k: (v if k in _PARQUET_SCALARS else json.dumps(v)) for k, v in full.items()}


def from_record(rec: dict[str, Any]) -> dict[str, Any]:
    """The row a Parquet record holds (the JSONL row: a column the row did not have is null and left out)."""
    out = {}
    for k, v in rec.items():
        if v is None and k not in ("error",):
            continue
        out[k] = v if k in _PARQUET_SCALARS or not isinstance(v, str) else json.loads(v)
    return out


def read_shard(path: Path) -> list[dict[str, Any]]:
    """The rows of one shard (JSONL: as `read_done` reads the local output; Parquet: decoded records)."""
    if path.suffix == ".jsonl":
        rows, _ = read_jsonl(path)
        return [r for r in rows if isinstance(r, dict) and isinstance(r.get("source"), str)]
    import pyarrow.parquet as pq

    try:
        return [from_record(r) for r in pq.read_table(path).to_pylist()]
    except Exception as exc:  # a shard is written whole, so this is someone else's file
        raise InputError(f"not a readable Parquet shard: {exc}", path=path) from None


def write_shard(path: Path, rows: list[dict[str, Any]], lines: list[str] | None = None) -> None:
    """One shard, whole: written under a temporary name next to it, then renamed."""
    if path.suffix == ".jsonl":
        from .report import jsonl_line

        atomic_write(path, "".join(lines if lines is not None else [jsonl_line(r) for r in rows]))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        records = [to_record(r) for r in rows]
        # the typed columns always (a shard of unreadable adapters has no rank or layers, and its schema must
        # still match the others'); null where a row lacks them, and left out again when read back
        keys = list(dict.fromkeys([*(k for k in _PARQUET_SCALARS if k != "error"), *(k for r in records for k in r)]))
        pq.write_table(pa.Table.from_pylist(records, schema=_parquet_schema(keys)), tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def prepare_folder(folder: Path, fmt: str, resume: bool) -> dict[str, dict[str, Any]]:
    """The rows to resume from, by source. Without ``resume`` the folder's shards are removed (as the
    local scan truncates its JSONL); with it, rows that were not scored (and any second row of a
    source) are dropped from their shards, rewritten whole, so that their sources are scored again
    and every source is in the folder once."""
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob(".part-*.tmp"):  # left by a writer killed mid-shard
        tmp.unlink(missing_ok=True)
    done: dict[str, dict[str, Any]] = {}
    for path in shards(folder, fmt) + shards(folder, "parquet" if fmt == "jsonl" else "jsonl"):
        if not resume:
            path.unlink()
            continue
        if path.suffix != f".{fmt}":
            raise UsageError(f"{elide(str(folder))} holds .{path.suffix[1:]} shards; resume with --output of that format")
        rows = read_shard(path)
        keep = [r for r in rows if r.get("status") == "ok" and r["source"] not in done]
        done.update((r["source"], r) for r in keep)
        if len(keep) != len(rows):
            if keep:
                write_shard(path, keep)
            else:
                path.unlink()
    return done


class ShardWriter:
    """Rows to shards of ``shard_rows`` rows (or what came in ``shard_seconds``); `close` writes the rest."""

    def __init__(self, folder: Path | None, fmt: str, shard_rows: int, shard_seconds: float):
        self.folder, self.fmt = folder, fmt
        self.shard_rows, self.shard_seconds = max(1, shard_rows), shard_seconds
        self.run = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.written: list[Path] = []
        self._rows: list[dict[str, Any]] = []
        self._lines: list[str] = []
        self._since = time.monotonic()

    def add(self, row: dict[str, Any], line: str) -> None:
        if self.folder is None:
            return
        self._rows.append(row)
        self._lines.append(line)
        if len(self._rows) >= self.shard_rows or time.monotonic() - self._since >= self.shard_seconds:
            self.flush()

    def flush(self) -> None:
        if self.folder is not None and self._rows:
            path = self.folder / f"part-{self.run}-{len(self.written):05d}.{self.fmt}"
            write_shard(path, self._rows, self._lines)
            self.written.append(path)
        self._rows, self._lines = [], []
        self._since = time.monotonic()


# ---- the Ray stages --------------------------------------------------------------------------------
def _read_batch(batch: dict[str, np.ndarray], *, light: Any, full: Any, targets: list[Any], slot_floats: int,
                before_read: Callable[[list[str]], None] | None) -> dict[str, np.ndarray]:
    """Read task: each source → a pickled (row, payload); payload None (nothing to score), ("slot",
    bytes, written) in a slot's layout, or ("packed", numpy groups) when it does not fit one."""
    sources = [str(s) for s in batch["source"]]
    if before_read is not None:
        before_read(sources)
    out = [pickle.dumps(_read_one(s, str(e), light, full, targets, slot_floats), protocol=5)
           for s, e in zip(sources, batch["error"])]
    return {"idx": batch["idx"], "source": batch["source"], "item": np.array(out, dtype=object)}


def _read_one(source: str, error: str, light: Any, full: Any, targets: list[Any], slot_floats: int) -> tuple[Any, Any]:
    from .discovery import Found
    from .lightread import base_row
    from .scoring import fill_truth
    from .slots import InSlot
    from .slots import layout as slot_layout

    if error:  # discovery's verdict (a missing path, a refused link): a row, nothing to read
        row = base_row(source)
        row.update(status="error", error=error)
        return row, None
    view = np.empty(4 * slot_floats, np.uint8)
    try:
        got = light.read(source, view)
    except Exception:  # an unusual file: the full reader decides, with lolscan.load's messages
        got = None
    if got is not None:
        row, written, labels = got
        fill_truth(row, targets, labels)
    else:
        import torch

        torch.set_num_threads(1)
        item = full(Found(source), torch.from_numpy(view.view(np.float32)))
        row, written = item.row, item.packed
        if written is not None and not isinstance(written, InSlot):
            return row, ("packed", written)  # as_numpy: plain arrays
    if written is None:
        return row, None
    written = written if isinstance(written, InSlot) else InSlot(written)
    _, used = slot_layout([(g[0], g[1]) for g in light.groups], written)
    return row, ("slot", view[:used].tobytes(), written)


class _ScoreActor:
    """Scoring actor: one checkpoint on its device, the local scan's `Stages` (stack, predict, domain
    score, an adapter that breaks its batch isolated) and its gates, per batch of read adapters."""

    def __init__(self, model_path: str | list[str], device: str, gates: list[Any], threads: int,
                 before_score: Callable[[list[str]], None] | None = None):
        import torch

        from ..checkpoint import load_checkpoint, load_checkpoints
        from ..utils.device import resolve_device
        from .stages import Stages

        torch.set_num_threads(max(1, threads))
        if isinstance(model_path, list):  # several bundled checkpoints: one `CheckpointSet`
            self.ckpt = load_checkpoints(model_path, device=resolve_device(device))
        else:
            self.ckpt = load_checkpoint(model_path, device=resolve_device(device))
        self.gates, self.before_score = gates, before_score
        self._slots: list[Any] = []
        dtype = next(iter(self.ckpt.model.parameters())).dtype
        self.stages = Stages(self.ckpt, dtype, lambda i: self._slots[i], {k: 0.0 for k in ("assemble", "predict")})

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from .discovery import Found
        from .gates import apply_gates
        from .report import jsonl_line
        from .scoring import _Item

        if self.before_score is not None:
            self.before_score([str(s) for s in batch["source"]])
        items, self._slots = [], []
        for source, blob in zip(batch["source"], batch["item"]):
            row, payload = pickle.loads(blob)  # our read task's pickle, never a file's bytes
            item = _Item(Found(str(source)), row)
            if payload is not None and payload[0] == "slot":
                self._slots.append(torch.frombuffer(bytearray(payload[1]), dtype=torch.uint8))
                item.slot, item.packed = len(self._slots) - 1, payload[2]
            elif payload is not None:
                item.packed = [tuple(torch.from_numpy(x) for x in group) for group in payload[1]]
            items.append(item)
        self.stages.submit(items).result()
        self._slots = []
        rows, lines = [], []
        for it in items:
            apply_gates(it.row, self.gates, self.ckpt.targets)
            rows.append(pickle.dumps(it.row, protocol=5))
            lines.append(jsonl_line(it.row))
        return {"idx": batch["idx"], "row": np.array(rows, dtype=object), "line": np.array(lines, dtype=object)}


def pipeline(ray: Any, todo: list[tuple[int, Any]], ckpt: Any, model_path: str | list[str], opts: PredictOptions,
             ropts: RayOptions) -> Any:
    """The Ray Data dataset of scored rows (columns idx, row, line) for ``todo`` (index, `Found`)."""
    from .handoff import packed_floats
    from .lightread import LightReader
    from .scoring import _Reader

    import ray.data

    rule = ckpt.fit_rule()
    light = LightReader(rule, [t.name for t in ckpt.targets])
    full = _Reader(rule, [t.to_json() for t in ckpt.targets], opts.allow_pickle, dict(opts.source_options or {}), True)
    items = [{"idx": i, "source": f.source, "error": f.error or ""} for i, f in todo]
    blocks = max(1, math.ceil(len(items) / max(1, ropts.read_batch)))
    cuda = _wants_cuda(opts.device)
    scorers = ropts.scorers or (max(1, int(ray.cluster_resources().get("GPU", 0))) if cuda else 1)
    threads = opts.threads or 1
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    # max_calls recycles a read worker now and then (bounds what parsing many files may leak); it also
    # keeps Ray Data from fusing the reads into the scoring actors, where they would hold the GPU.
    ds = ds.map_batches(_read_batch, batch_size=ropts.read_batch, batch_format="numpy", num_cpus=1,
                        max_calls=ropts.read_calls, fn_kwargs=dict(light=light, full=full, targets=list(ckpt.targets),
                                       slot_floats=packed_floats(ckpt.spec, 16), before_read=ropts.before_read))
    return ds.map_batches(_ScoreActor, batch_size=opts.batch_size, batch_format="numpy",
                          compute=ray.data.ActorPoolStrategy(size=scorers), num_cpus=threads, num_gpus=1 if cuda else 0,
                          fn_constructor_kwargs=dict(model_path=model_path, device=opts.device, gates=opts.gates,
                                                     threads=threads, before_score=ropts.before_score))


def _wants_cuda(device: str) -> bool:
    if device == "auto":
        import ray

        return ray.cluster_resources().get("GPU", 0) > 0
    return device.startswith("cuda")


@contextmanager
def ray_session(ray: Any, ropts: RayOptions) -> Iterator[None]:
    """Ray, connected (a running instance is used as it is) or started locally for this scan and
    stopped after it; Ray Data's own progress bars off (the caller draws one)."""
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        if ropts.address:
            kwargs["address"] = ropts.address
        elif ropts.num_cpus:
            kwargs["num_cpus"] = ropts.num_cpus
        try:
            ray.init(**{**kwargs, **ropts.init_kwargs})
        except ConnectionError as exc:
            raise UsageError(f"cannot connect to Ray at {ropts.address}: {exc}") from None
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # not a line per dataset run on the user's stderr
    try:
        yield
    finally:
        if started:
            ray.shutdown()


# ---- the run -------------------------------------------------------------------------------------
def predict(opts: PredictOptions, hooks: PredictHooks | None = None) -> PredictResult:
    """`run.predict` with ``opts.engine == "ray"``: the same rows, scored by a Ray Data pipeline;
    ``--output NAME.jsonl|NAME.parquet`` is a folder of shards, other formats a file written at the end."""
    from .gates import apply_gates
    from .report import render
    from .run import _check_gates, model_info, open_checkpoint, open_chosen

    ray = require_ray()
    hooks = hooks or PredictHooks()
    ropts = opts.ray if isinstance(opts.ray, RayOptions) else RayOptions()
    sharded = opts.output is not None and opts.out_fmt in SHARD_FORMATS
    folder = shard_folder(opts.output, opts.out_fmt) if sharded else None
    with output_lock(opts.output):
        from ..checkpoint import default_model, resolve
        from . import auto
        from .discovery import expand

        cands = [] if opts.model else auto.candidates()
        model_path: str | list[str] = ""
        ckpt = None
        if not cands:  # --model, or no bundled checkpoint: the only one installed
            model_path = str(resolve(opts.model) if opts.model else default_model())
            ckpt = open_checkpoint(model_path, "cpu")  # the driver's copy: targets, gates, the report's header
            _check_gates(opts.gates, ckpt)
        found = expand(opts.targets, allow_pickle=opts.allow_pickle, follow_symlinks=opts.follow_symlinks)
        probed: dict[str, dict[str, Any]] = {}
        if cands:  # every bundled checkpoint that fits the first adapter some bundled checkpoint fits (`auto`), read here
            choice = auto.choose(found, {f.source for f in found}, opts.allow_pickle, dict(opts.source_options or {}), cands)
            ckpt = open_chosen(choice, "cpu")
            if ckpt is not None:
                _check_gates(opts.gates, ckpt)
                model_path = [str(c.path) for c in choice.chosen] if len(choice.chosen) > 1 else str(choice.chosen[0].path)
            else:  # none fits any adapter: the rows are the probe's, no pipeline runs
                probed = choice.rows
        targets = ckpt.targets if ckpt is not None else []
        done = prepare_folder(folder, opts.out_fmt, opts.resume) if folder is not None else {}
        todo = [(i, f) for i, f in enumerate(found) if f.source not in done]
        if done:
            hooks.resumed(len(found) - len(todo), len(found))
            for f in found:
                if f.source in done:
                    apply_gates(done[f.source], opts.gates, targets)  # this run's gates
                    if opts.live:
                        hooks.row(done[f.source])
        new_rows, out_of_domain = _run(ray, opts, ropts, hooks, ckpt, model_path, todo, folder, probed)
        rows = [new_rows.get(f.source) or done[f.source] for f in found if f.source in new_rows or f.source in done]
        if opts.output is not None and not sharded:
            atomic_write(opts.output, render(opts.out_fmt, rows, model_info(ckpt), opts.gates, targets,
                                             allow_nonfinite=opts.allow_nonfinite))
    return PredictResult(ckpt=ckpt, rows=rows, found=len(found), out_of_domain=out_of_domain)


def _run(ray: Any, opts: PredictOptions, ropts: RayOptions, hooks: PredictHooks, ckpt: Any, model_path: str | list[str],
         todo: list[tuple[int, Any]], folder: Path | None,
         probed: dict[str, dict[str, Any]] | None = None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Score ``todo`` on Ray; rows go to shards (whole ones, also when the run stops early) and hooks.
    ``ckpt`` None: no checkpoint fits any adapter, and ``probed`` holds every row (by source)."""
    from .report import jsonl_line

    new_rows: dict[str, dict[str, Any]] = {}
    out_of_domain: list[str] = []
    if not todo:
        return new_rows, out_of_domain
    writer = ShardWriter(folder, opts.out_fmt or "jsonl", ropts.shard_rows, ropts.shard_seconds)
    keep_rows = not opts.live or opts.out_fmt not in (None, *SHARD_FORMATS)  # 10⁶ live rows: not all kept
    name = ckpt.name if ckpt is not None else ""

    def take(row: dict[str, Any], line: str) -> None:
        writer.add(row, line)
        new_rows[row["source"]] = row if keep_rows else {  # as the local scan: what the exit code needs
            "source": row["source"], "status": row["status"], "gates": [{"passed": g["passed"]} for g in row["gates"]]}
        if row["status"] != "ok":
            hooks.problem(row, name)
        elif (row.get("domain") or {}).get("in_domain") is False:
            out_of_domain.append(row["source"])
        if opts.live:
            hooks.row(row)

    if ckpt is None:
        with hooks.progress(len(todo)) as advance:
            try:
                for _, f in todo:
                    row = (probed or {})[f.source]
                    row["gates"] = []
                    take(row, jsonl_line(row))
                    advance()
            finally:
                writer.flush()
        return new_rows, out_of_domain
    with ray_session(ray, ropts), hooks.progress(len(todo)) as advance:
        try:
            ds = pipeline(ray, todo, ckpt, model_path, opts, ropts)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for blob, line in zip(batch["row"], batch["line"]):
                    row = pickle.loads(blob)  # our scoring actor's pickle
                    if row["source"] in new_rows:  # Ray hands each task's output once; this guards the shards
                        continue
                    take(row, str(line))
                    advance()
        finally:
            writer.flush()  # the rows scored so far, whole: a resume skips them
    return new_rows, out_of_domain
