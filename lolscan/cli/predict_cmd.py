"""`lolscan predict`: score adapters with a checkpoint; reports, streaming JSONL output, CI gates."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from ..errors import EXIT_BAD_INPUT, UsageError, elide
from ..utils.files import atomic_write, read_jsonl
from ..scan.report import apply_gates, check_gates, exit_code, format_from_suffix, jsonl_line, parse_gate, render, render_table, summary
from .app import app
from .console import console, err_console, print_error
from .plain import PlainCommand, examples
from .options import AllowPickle, CivitaiToken, Device, FollowSymlinks, HfToken, Offline, source_options


def read_done(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Rows already in a JSONL output, by source, and the byte length of its complete lines.

    A last line cut off by a crash (no newline, or not JSON) is not counted; the caller
    truncates the file to the returned length before appending.
    """
    rows, good = read_jsonl(path)
    return {row["source"]: row for row in rows if isinstance(row, dict) and isinstance(row.get("source"), str)}, good


def parse_gates(under: list[str], over: list[str]) -> list[Any]:
    gates = []
    for items, op in ((under, "under"), (over, "over")):
        for text in items:
            try:
                gates.append(parse_gate(text, op))
            except UsageError as exc:
                raise typer.BadParameter(str(exc), param_hint=f"--fail-{op}") from None
    return gates


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
    from contextlib import nullcontext

    from ..scan.scoring import ReaderPool, auto_processes

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
        err_console.print(f"[bold red]error:[/] {elide(str(output))} is being written by another lolscan run "
                          f"(lock {elide(str(lock_path))} is held); wait for it to finish or choose another --output", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except OSError as exc:
        err_console.print(f"[bold red]error:[/] cannot lock {elide(str(lock_path))}: {exc.strerror or exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    try:
        yield
    finally:
        lock.release()


@app.command(cls=PlainCommand, epilog=examples(
    "lolscan predict adapter.safetensors",
    "lolscan predict models/examples --model smollm2-data-sources",
    "lolscan predict ./loras/ -f jsonl -o results.jsonl --resume",
    "lolscan predict adapters/ --fail-over val_loss=2.5 -f junit -o lolscan.xml",
    "lolscan predict adapters/ --fail-over val_loss=2.5 -o lolscan.sarif",
    "lolscan predict hf://owner/repo --offline",
))
def predict(
    targets: Annotated[list[str], typer.Argument(help="LoRA files, PEFT folders, folders or globs of many, or hf:// / civitai: URIs.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="NAME|PATH", help="Checkpoint: a path, then a user checkpoint name, then a bundled one.")] = None,
    fmt: Annotated[Literal["table", "json", "jsonl", "csv", "markdown", "junit", "sarif"], typer.Option("--format", "-f", help="Report on stdout (sarif: for GitHub code scanning).")] = "table",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="FILE", help="Also write results here: .jsonl is appended as it goes; .json/.csv/.md/.xml/.sarif are written once at the end.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip adapters already scored in the --output JSONL.")] = False,
    fail_under: Annotated[list[str], typer.Option("--fail-under", metavar="TARGET=VALUE", help="Gate TARGET=VALUE (or TARGET:LABEL=VALUE): fail when the prediction is below VALUE (equal passes).")] = [],
    fail_over: Annotated[list[str], typer.Option("--fail-over", metavar="TARGET=VALUE", help="Gate TARGET=VALUE: fail when the prediction is above VALUE (equal passes).")] = [],
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(help="Adapters per scoring batch.", min=1)] = 32,
    workers: Annotated[int, typer.Option(help="Threads reading files (when --procs is 0).", min=1)] = 2,
    procs: Annotated[str, typer.Option("--procs", metavar="N|auto", help="Processes parsing files: a number, 0 for threads only, or auto (many files on 4+ cores).")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch.", min=1)] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
    allow_pickle: AllowPickle = False,
    allow_nonfinite: Annotated[bool, typer.Option("--allow-nonfinite", help="Adapters holding NaN/Inf values are still reported (status nonfinite, not scored) but do not make the exit code 3.")] = False,
    follow_symlinks: FollowSymlinks = False,
    offline: Offline = False,
    civitai_token: CivitaiToken = None,
    hf_token: HfToken = None,
) -> None:
    """Predict each adapter's targets with a checkpoint; optionally fail a CI job on the predictions.

    Exit codes: 0 ok, 1 a gate failed, 2 usage error, 3 an adapter could not be read or holds
    NaN/Inf values (unless --allow-nonfinite), or --output is in use by another run, 4 an adapter
    does not fit the checkpoint (4 wins over 3, 3 over 1).
    """
    from .models_cmd import card_meaning, cli_errors, open_model, print_failure  # lazy: keeps `models` last in the help
    import torch

    from ..scan.discovery import expand
    from ..scan.scoring import Scorer, ScoreOptions, auto_processes

    gates = parse_gates(fail_under, fail_over)
    out_fmt = None
    if output is not None:
        out_fmt = format_from_suffix(output)
        if out_fmt is None:
            raise typer.BadParameter(f"{output}: use a .jsonl, .json, .csv, .md, .xml or .sarif file name", param_hint="--output")
    if resume and out_fmt != "jsonl":
        raise typer.BadParameter("--resume needs --output FILE.jsonl", param_hint="--resume")
    if procs != "auto" and not (procs.isdigit()):
        raise typer.BadParameter(f"{procs!r}: expected a number or auto", param_hint="--procs")
    if threads:
        torch.set_num_threads(threads)
    # Reader processes start now and warm up while the checkpoint loads and the folder is walked;
    # they stop on the way out whatever happens (a checkpoint that fails to load included).
    with output_lock(output), early_readers(procs, targets) as readers, cli_errors():
        ckpt = open_model(model, device)
        try:
            check_gates(gates, ckpt.targets)
        except UsageError as exc:
            raise typer.BadParameter(str(exc), param_hint="--fail-under/--fail-over") from None
        found = expand(targets, allow_pickle=allow_pickle, follow_symlinks=follow_symlinks)
        done: dict[str, dict[str, Any]] = {}
        stream = None
        if out_fmt == "jsonl":
            assert output is not None
            output.parent.mkdir(parents=True, exist_ok=True)
            if resume:
                done, good = read_done(output)
                done = {k: v for k, v in done.items() if v.get("status") == "ok"}  # failures are retried
                with open(output, "ab") as fh:
                    fh.truncate(good)
            stream = open(output, "a" if resume else "w", encoding="utf-8")
        todo = [f for f in found if f.source not in done]
        if done:
            err_console.print(f"resuming: {len(found) - len(todo)} of {len(found)} adapters already in {output}", highlight=False)
            if fmt == "jsonl":  # stdout gets the resumed rows first, then new ones as they are scored
                for f in found:
                    if f.source in done:
                        apply_gates(done[f.source], gates, ckpt.targets)
                        sys.stdout.write(jsonl_line(done[f.source]))
        n_procs = auto_processes(len(todo)) if procs == "auto" else int(procs)
        if readers is not None and readers.processes != n_procs:  # auto guessed many files; there are few
            readers.close()
            readers = None
        opts = ScoreOptions(batch_size=batch_size, workers=workers, allow_pickle=allow_pickle, processes=n_procs,
                            source_options=source_options(offline, civitai_token, hf_token))
        new_rows: dict[str, dict[str, Any]] = {}
        out_of_domain: list[str] = []
        # Streaming JSONL to stdout with no single-shot file keeps only what the exit code needs.
        keep_rows = fmt != "jsonl" or out_fmt not in (None, "jsonl")
        live_stdout = fmt == "jsonl"
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        try:
            # No bar where stderr is not a terminal: rich would only leave a blank line there.
            show_bar = progress and len(todo) >= 2 and err_console.is_terminal
            with Progress(*columns, console=err_console, transient=True, disable=not show_bar) as bar:
                task = bar.add_task("scoring", total=len(todo))
                for row in Scorer(ckpt, opts, readers=readers).score(todo):
                    apply_gates(row, gates, ckpt.targets)
                    new_rows[row["source"]] = row if keep_rows else {
                        "source": row["source"], "status": row["status"], "gates": [{"passed": g["passed"]} for g in row["gates"]]
                    }
                    if row["status"] == "nonfinite":
                        bar.console.print(f"[bold yellow]warning:[/] {elide(row['source'])}: {row['error']}", highlight=False, soft_wrap=True)
                    elif row["status"] != "ok":
                        print_failure(row, ckpt.name, on=bar.console)  # once: the table leaves errors out
                    elif (row.get("domain") or {}).get("in_domain") is False:
                        out_of_domain.append(row["source"])
                    if stream is not None:
                        stream.write(jsonl_line(row))
                        stream.flush()
                    if live_stdout:
                        sys.stdout.write(jsonl_line(row))
                        sys.stdout.flush()
                    bar.advance(task)
        finally:
            if stream is not None:
                stream.close()
        rows = []
        for f in found:
            row = new_rows.get(f.source) or done.get(f.source)
            if row is not None:
                if f.source in done and f.source not in new_rows:
                    apply_gates(row, gates, ckpt.targets)  # gates of this run apply to resumed rows too
                rows.append(row)
        info = ckpt.info()
        if fmt == "table":
            if rows:
                render_table(console, rows, ckpt.targets, title=f"{info['name']} ({info['architecture']})",
                             caption=card_meaning(ckpt.card))
        elif not live_stdout:
            sys.stdout.write(render(fmt, rows, info, gates, ckpt.targets, allow_nonfinite=allow_nonfinite))
            sys.stdout.flush()
        if out_fmt not in (None, "jsonl"):
            assert output is not None
            atomic_write(output, render(out_fmt, rows, info, gates, ckpt.targets, allow_nonfinite=allow_nonfinite))
        if out_of_domain:
            err_console.print(
                f"[yellow]warning:[/] {len(out_of_domain)} adapter(s) are unlike this checkpoint's training adapters "
                f"(e.g. {elide(out_of_domain[0])}): their predictions are extrapolations; see the 'domain' column",
                highlight=False, soft_wrap=True)
        s = summary(rows, allow_nonfinite=allow_nonfinite)
        failed_gates = s["gate_failures"]
        err_console.print(
            f"{s['ok']} scored, {s['errors']} unreadable, {s['incompatible']} not fitting the model"
            + (f", {s['nonfinite']} holding NaN/Inf" if s["nonfinite"] else "")
            + (f", {failed_gates} gate failure(s)" if gates else ""),
            highlight=False,
        )
        code = exit_code(rows, allow_nonfinite=allow_nonfinite)
        if not found:
            print_error("no adapters to score")
            code = 3
    raise typer.Exit(code)
