"""`lolscan predict`: score adapters with a checkpoint; reports, streaming JSONL output, CI gates."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from ..errors import UsageError, elide
from ..scan.gates import exit_code, parse_gate, summary
from ..scan.report import format_from_suffix, jsonl_line, render, render_table
from .app import app
from .console import console, err_console, print_error, print_warning
from .plain import PlainCommand, examples
from .options import AllowPickle, CivitaiToken, Device, FollowSymlinks, HfToken, Offline, source_options


def parse_gates(under: list[str], over: list[str]) -> list[Any]:
    gates = []
    for items, op in ((under, "under"), (over, "over")):
        for text in items:
            try:
                gates.append(parse_gate(text, op))
            except UsageError as exc:
                raise typer.BadParameter(str(exc), param_hint=f"--fail-{op}") from None
    return gates


def output_format(output: Optional[Path], resume: bool, procs: str, engine: str = "local") -> Optional[str]:
    """The --output file's format from its suffix; the option combinations that make no sense fail here.
    With --engine ray, .jsonl and .parquet name a folder of shards."""
    out_fmt = None
    if output is not None:
        suffix = output.suffix.lower()
        out_fmt = "parquet" if engine == "ray" and suffix == ".parquet" else format_from_suffix(output)
        if out_fmt is None:
            also = " (.parquet with --engine ray)" if engine == "local" else ""
            raise typer.BadParameter(f"{output}: use a .jsonl, .json, .csv, .md, .xml or .sarif file name{also}", param_hint="--output")
    if resume and out_fmt not in (("jsonl", "parquet") if engine == "ray" else ("jsonl",)):
        raise typer.BadParameter("--resume needs --output FILE.jsonl" + (" or FOLDER.parquet" if engine == "ray" else ""),
                                 param_hint="--resume")
    if procs != "auto" and not (procs.isdigit()):
        raise typer.BadParameter(f"{procs!r}: expected a number or auto", param_hint="--procs")
    return out_fmt


def ray_options(engine: str, address: Optional[str]) -> Any:
    """`RayOptions` for --engine ray (imported only then: the module needs no Ray until it runs)."""
    if engine != "ray":
        return None
    from ..scan.ray_engine import RayOptions

    return RayOptions(address=address)


def console_hooks(live: bool, output: Optional[Path], show_progress: bool) -> Any:
    """`PredictHooks` that draw on the CLI's consoles: live rows on stdout, the rest on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..scan.run import PredictHooks
    from .models_cmd import print_failure

    def resumed(n_done: int, n_found: int) -> None:
        err_console.print(f"resuming: {n_done} of {n_found} adapters already in {output}", highlight=False)

    def row(r: dict[str, Any]) -> None:
        sys.stdout.write(jsonl_line(r))
        sys.stdout.flush()

    def problem(r: dict[str, Any], model_name: str) -> None:
        if r["status"] == "nonfinite":
            print_warning(f"{elide(r['source'])}: {r['error']}")  # a file name's [brackets] are not markup
        else:
            print_failure(r, model_name, on=err_console)  # once: the table leaves errors out

    @contextmanager
    def progress(total: int) -> Iterator[Any]:
        columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        # No bar where stderr is not a terminal: rich would only leave a blank line there.
        show_bar = show_progress and total >= 2 and err_console.is_terminal
        with Progress(*columns, console=err_console, transient=True, disable=not show_bar) as bar:
            task = bar.add_task("scoring", total=total)
            yield lambda: bar.advance(task)

    return PredictHooks(resumed=resumed, row=row if live else PredictHooks.row, problem=problem, progress=progress)


def render_result(result: Any, fmt: str, gates: list[Any], allow_nonfinite: bool) -> int:
    """The report on stdout (unless rows went out live), the summary on stderr; the exit code."""
    from .models_cmd import card_meaning

    from ..scan.run import model_info

    ckpt, rows = result.ckpt, result.rows
    info = model_info(ckpt)
    targets = ckpt.targets if ckpt is not None else []
    if fmt == "table":
        if rows and ckpt is not None:  # (no checkpoint: no bundled one fits any adapter; each said so on stderr)
            members = ckpt.members
            caption = (card_meaning(ckpt.card) if len(members) == 1 else
                       "\n".join(f"{m.name}: {', '.join(t.name for t in m.targets)}. {card_meaning(m.card)}".rstrip()
                                 for m in members))
            render_table(console, rows, targets, title=f"{info['name']} ({info['architecture']})", caption=caption)
    elif fmt != "jsonl":
        sys.stdout.write(render(fmt, rows, info, gates, targets, allow_nonfinite=allow_nonfinite))
        sys.stdout.flush()
    if result.out_of_domain:
        err_console.print(
            f"[yellow]warning:[/] {len(result.out_of_domain)} adapter(s) are unlike this checkpoint's training adapters "
            f"(e.g. {elide(result.out_of_domain[0])}): their predictions are extrapolations; see the 'domain' column",
            highlight=False, soft_wrap=True)
    s = summary(rows, allow_nonfinite=allow_nonfinite)
    failed_gates = s["gate_failures"]
    err_console.print(
        f"{s['ok']} scored, {s['errors']} unreadable, {s['incompatible']} not fitting the model"
        + ("s" if ckpt is None or len(ckpt.members) > 1 else "")
        + (f", {s['nonfinite']} holding NaN/Inf" if s["nonfinite"] else "")
        + (f", {failed_gates} gate failure(s)" if gates else ""),
        highlight=False,
    )
    code = exit_code(rows, allow_nonfinite=allow_nonfinite)
    if not result.found:
        print_error("no adapters to score")
        code = 3
    return code


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
    model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="NAME|PATH", help="Checkpoint: a path, then a user checkpoint name, then a bundled one. Default: every bundled checkpoint that fits the first adapter (that any fits), their targets side by side.")] = None,
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
    engine: Annotated[Literal["local", "ray"], typer.Option("--engine", help='Where to scan: here, or a Ray Data pipeline (pip install "lolscan\\[ray]"); with ray, -o NAME.jsonl|NAME.parquet is a folder of shards.')] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", metavar="ADDRESS", envvar="RAY_ADDRESS", show_envvar=True, help="Ray cluster to run on (default: start a local one).")] = None,
    offline: Offline = False,
    civitai_token: CivitaiToken = None,
    hf_token: HfToken = None,
) -> None:
    """Predict each adapter's targets with a checkpoint; optionally fail a CI job on the predictions.

    Without --model: every bundled checkpoint that fits the adapters. The first adapter (in the order
    found) that some bundled checkpoint fits chooses them; an adapter they do not fit is reported as
    not fitting, naming the bundled checkpoints that fit it, if any, or how to build one.

    Exit codes: 0 ok, 1 a gate failed, 2 usage error, 3 an adapter could not be read or holds
    NaN/Inf values (unless --allow-nonfinite), --output is in use by another run, or --engine ray
    without Ray installed, 4 an adapter does not fit the checkpoint (4 wins over 3, 3 over 1).
    """
    from .models_cmd import cli_errors  # lazy: keeps `models` last in the help
    from ..scan.run import GateMismatch, PredictOptions
    from ..scan.run import predict as run_predict

    gates = parse_gates(fail_under, fail_over)
    out_fmt = output_format(output, resume, procs, engine)
    opts = PredictOptions(
        targets=targets, model=model, output=output, out_fmt=out_fmt, resume=resume, gates=gates, live=fmt == "jsonl",
        device=device, batch_size=batch_size, workers=workers, procs=procs, threads=threads, allow_pickle=allow_pickle,
        allow_nonfinite=allow_nonfinite, follow_symlinks=follow_symlinks,
        source_options=source_options(offline, civitai_token, hf_token), engine=engine, ray=ray_options(engine, ray_address),
    )
    with cli_errors():
        try:
            result = run_predict(opts, console_hooks(opts.live, output, progress))
        except GateMismatch as exc:
            raise typer.BadParameter(str(exc), param_hint="--fail-under/--fail-over") from None
        code = render_result(result, fmt, gates, allow_nonfinite)
    raise typer.Exit(code)
