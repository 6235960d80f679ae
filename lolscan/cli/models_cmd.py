"""`lolscan models`: list the bundled and user checkpoints; shared model/error helpers for commands."""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal, Optional

import typer
from rich.table import Table

from ..checkpoint import Checkpoint, bundled_dir, default_model, list_checkpoints, load_checkpoint, read_card, resolve, user_dir
from ..errors import LolscanError, UsageError
from ..metrics import HEADLINE, format_metric
from .app import app
from .console import console, err_console, print_error


@contextmanager
def cli_errors() -> Iterator[None]:
    """Library errors -> one stderr line and their exit code (also under CliRunner, not only main())."""
    try:
        yield
    except LolscanError as exc:
        print_error(exc)
        raise typer.Exit(exc.exit_code) from None


def bad_parameter(exc: UsageError, hint: str) -> typer.BadParameter:
    return typer.BadParameter(str(exc), param_hint=hint)


def open_model(model: Optional[str], device: str) -> Checkpoint:
    """``--model NAME|PATH`` (or the default checkpoint) loaded onto the device."""
    from ..training import resolve_device

    path = resolve(model) if model else default_model()
    return load_checkpoint(path, device=resolve_device(device))


def headline_metrics(targets: list[dict[str, Any]], metrics: dict[str, dict[str, Any]]) -> str:
    parts = []
    for t in targets:
        m = metrics.get(t["name"]) or {}
        shown = [f"{k}={format_metric(m.get(k))}" for k in HEADLINE.get(t["kind"], ()) if k in m]
        if shown:
            parts.append(f"{t['name']}: " + " ".join(shown))
    return "; ".join(parts)


@app.command()
def models(
    name: Annotated[Optional[str], typer.Argument(help="Show one checkpoint's card instead of the list.")] = None,
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", "-f", help="table or json.")] = "table",
) -> None:
    """List checkpoints: your own (user data folder) and the bundled ones, with task, base model and test metrics."""
    with cli_errors():
        if name:
            card = read_card(resolve(name))
            if fmt == "json":
                print(json.dumps(card, indent=2))
            else:
                _show_card(card)
            return
        infos = list_checkpoints()
        if fmt == "json":
            print(json.dumps({"schema_version": 1, "user_dir": str(user_dir()), "bundled_dir": str(bundled_dir()), "models": infos}, indent=2))
            return
        if not infos:
            err_console.print(f"no checkpoints in {user_dir()} or {bundled_dir()}; train one with `lolscan train`")
            return
        table = Table(title="lolscan checkpoints")
        for col in ("name", "origin", "architecture", "task", "base model", "test metrics"):
            table.add_column(col, overflow="fold")
        for info in infos:
            if info.get("error"):
                table.add_row(info["name"], info["origin"], "", f"[red]{info['error']}[/]", "", "")
                continue
            card_targets = read_card_targets(info)
            name_cell = info["name"] + (" [green](default)[/]" if info.get("default") else "")
            table.add_row(name_cell, info["origin"], info["architecture"], info["task"], info["base_model"], headline_metrics(card_targets, info["metrics"]))
        console.print(table)


def read_card_targets(info: dict[str, Any]) -> list[dict[str, Any]]:
    from pathlib import Path

    try:
        return read_card(Path(info["path"]))["targets"]
    except LolscanError:
        return []


def _show_card(card: dict[str, Any]) -> None:
    t = Table(title=f"[bold]{card.get('name', '')}[/]", show_header=False, title_justify="left")
    t.add_column(style="cyan", no_wrap=True)
    t.add_column(overflow="fold")
    t.add_row("architecture", f"{card['architecture']} {json.dumps(card['hparams'])}")
    t.add_row("base model", str(card.get("base_model", "unknown")))
    t.add_row("modules", str(len(card["layer_spec"].get("layers", []))))
    for target in card["targets"]:
        desc = target["kind"] + (f", units {target['units']}" if target.get("units") else "")
        if target.get("labels"):
            desc += f", labels {', '.join(target['labels'])}"
        if target["kind"] == "regression":
            desc += f", mean {target['mean']:.4g}, std {target['std']:.4g}"
        t.add_row(f"target {target['name']}", desc)
    for split, per_target in (card.get("metrics") or {}).items():
        t.add_row(f"{split} metrics", headline_metrics(card["targets"], per_target))
    data = card.get("training_data") or {}
    if data:
        t.add_row("training data", f"{data.get('adapters')} adapters from {data.get('manifest')}, splits {data.get('splits')} ({data.get('split_method')})")
    t.add_row("lolscan version", str(card.get("lolscan_version")))
    console.print(t)


__all__ = ["models", "cli_errors", "open_model", "bad_parameter", "headline_metrics"]
