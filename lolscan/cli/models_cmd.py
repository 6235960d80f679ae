"""`lolscan models`: list the bundled and user checkpoints; shared model/error helpers for commands."""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..checkpoint import Checkpoint, bundled_dir, list_checkpoints, load_checkpoint, read_card, resolve, user_dir
from ..errors import LolscanError, UsageError
from ..evaluation.metrics import HEADLINE, METRIC_NAMES, format_metric
from ..formats.family import short_base_model
from .app import app
from .console import console, err_console, print_error
from .plain import PlainCommand, examples


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
    from ..scan.run import open_checkpoint

    return open_checkpoint(model, device)


def headline_metrics(targets: list[dict[str, Any]], metrics: dict[str, dict[str, Any]]) -> str:
    parts = []
    for t in targets:
        m = metrics.get(t["name"]) or {}
        shown = [f"{k}={format_metric(m.get(k))}" for k in HEADLINE.get(t["kind"], ()) if k in m]
        if shown:
            parts.append(f"{t['name']}: " + " ".join(shown))
    return "; ".join(parts)


@app.command(cls=PlainCommand, epilog=examples(
    "lolscan models",
    "lolscan models smollm2-val-loss",
    "lolscan models -f json",
    "lolscan models qwen2.5-coder-1.5b-val-loss --self-test",
))
def models(
    name: Annotated[Optional[str], typer.Argument(help="Show one checkpoint's card instead of the list.")] = None,
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", "-f", help="table or json.")] = "table",
    self_test: Annotated[bool, typer.Option("--self-test", help="Check NAME on synthetic adapters: the same output for "
                                            "any GL(r) gauge and zero-padded ranks, another for a changed update. Exit 1 on a failed check.")] = False,
) -> None:
    """List checkpoints: your own (user data folder) and the bundled ones, with task, base model and test metrics."""
    with cli_errors():
        if self_test:
            if not name:
                raise typer.BadParameter("name the checkpoint to test, e.g. lolscan models NAME --self-test", param_hint="--self-test")
            _self_test(name, fmt)
            return
        if name:
            card = read_card(resolve(name))
            if fmt == "json":
                print(json.dumps(card, indent=2))
            else:
                _show_card(card, resolve(name))
            return
        infos = list_checkpoints()
        if fmt == "json":
            print(json.dumps({"schema_version": 1, "user_dir": str(user_dir()), "bundled_dir": str(bundled_dir()), "models": infos}, indent=2))
            return
        if not infos:
            err_console.print(f"no checkpoints in {user_dir()} or {bundled_dir()}; train one with `lolscan train`")
            return
        table = Table(title="lolscan checkpoints")
        table.add_column("checkpoint", overflow="fold", ratio=3)
        table.add_column("predicts", overflow="fold", ratio=3)
        table.add_column("base model", overflow="fold", ratio=3)
        table.add_column("test metrics", overflow="fold", ratio=2)
        for info in infos:
            members = f" ×{info['ensemble']}" if info.get("ensemble") else ""  # an ensemble of that many models
            where = f"[dim]{escape(info.get('architecture', '?'))}{members}, {info['origin']}[/]"
            if info.get("error"):
                table.add_row(f"{escape(info['name'])}\n{where}", f"[red]{escape(info['error'])}[/]", "", "")
                continue
            card_targets = read_card_targets(info)
            name_cell = escape(info["name"]) + (" [green](default)[/]" if info.get("default") else "") + "\n" + where
            table.add_row(name_cell, escape(task_cell(card_targets) or info["task"]), escape(short_base_model(info["base_model"])),
                          short_metrics(card_targets, info["metrics"]))
        console.print(table)


def _self_test(name: str, fmt: str) -> None:
    from ..evaluation.selftest import TOLERANCE, run_self_test

    ckpt = load_checkpoint(resolve(name))
    checks = run_self_test(ckpt)
    failed = [c for c in checks if c.passed is False]
    if fmt == "json":
        print(json.dumps({"schema_version": 1, "model": ckpt.name, "architecture": ckpt.architecture,
                          "checks": [c.as_dict() for c in checks], "passed": not failed}, indent=2, default=str))
    else:
        table = Table(title=f"self-test of {escape(ckpt.name)} ({escape(ckpt.architecture)})")
        for col in ("check", "what", "relative change", "result"):
            table.add_column(col, overflow="fold")
        for c in checks:
            verdict = "[dim]not promised[/]" if c.passed is None else ("[green]pass[/]" if c.passed else "[bold red]FAIL[/]")
            table.add_row(c.name, escape(c.what), "–" if c.value != c.value else f"{c.value:.2e}", verdict)
        console.print(table)
        err_console.print(f"invariance must hold to {TOLERANCE:g} (relative); {len(failed)} check(s) failed", highlight=False)
    if failed:
        raise typer.Exit(1)


SHORT_METRIC = {"mse": "MSE", "r2": "R²", "kendall_tau": "τ", "accuracy": "acc.", "auc": "AUC", "mean_accuracy": "mean acc.", "mae": "MAE"}


def abbreviate_labels(labels: list[str], shown: int = 2) -> str:
    """``12 labels: a, b, c, …`` (a short list whole): one table cell, not twenty lines."""
    if len(labels) <= shown + 1:
        return ", ".join(labels)
    return f"{len(labels)} labels: " + ", ".join(labels[:shown]) + ", …"


def task_cell(targets: list[dict[str, Any]]) -> str:
    parts = []
    for t in targets:
        if t["kind"] == "regression":
            parts.append(f"{t['name']} (regression{', ' + t['units'] if t.get('units') else ''})")
        elif t["kind"] == "count":
            parts.append(f"{t['name']} (count{', ' + t['units'] if t.get('units') else ''}; of {abbreviate_labels(list(t.get('labels') or []))})")
        else:
            parts.append(f"{t['name']} ({t['kind']}; {abbreviate_labels(list(t.get('labels') or []))})")
    return "; ".join(parts)


def short_metrics(targets: list[dict[str, Any]], metrics: dict[str, dict[str, Any]]) -> str:
    parts = []
    for t in targets:
        m = metrics.get(t["name"]) or {}
        shown = [f"{SHORT_METRIC.get(k, k)} {format_metric(m.get(k))}" for k in HEADLINE.get(t["kind"], ()) if k in m]
        if shown:
            parts.append((f"{t['name']}: " if len(targets) > 1 else "") + ", ".join(shown))
    return "; ".join(parts)


def fit_hint(error: str, current: str, _cache: dict[str, str] = {}) -> str:
    """One line after an adapter that does not fit: what it looks like, and which checkpoints are for
    that base model (or which base models the installed checkpoints cover)."""
    import re

    from ..formats.family import diffusion_family, diffusion_kind

    m = re.search(r"the adapter looks like (.*?)\): ", error or "")
    looks = m.group(1) if m else ""
    key = f"{current}\0{looks}"
    if key not in _cache:
        infos = [i for i in list_checkpoints() if not i.get("error")]
        ours = short_base_model(looks) if looks else ""
        family = diffusion_kind(ours) if ours else None
        same = [i["name"] for i in infos if i["name"] != current and ours
                and (short_base_model(i["base_model"]) == ours or family and diffusion_family(i["base_model"]) == family)]
        what = f"a LoRA of {ours}" if ours else "this LoRA"
        if family and not same:
            _cache[key] = diffusion_hint(family)
        elif same:
            _cache[key] = f"{what}; checkpoints for that base model: {', '.join(same)} (--model NAME)"
        else:
            covered = sorted({short_base_model(i["base_model"]) for i in infos})
            _cache[key] = (f"{what}; the installed checkpoints cover {', '.join(covered) or 'no base model'} "
                           "(lolscan models); `lolscan train` fits one on your own labelled LoRAs")
    return _cache[key]


def diffusion_hint(family: str) -> str:
    """What to do with a LoRA of a diffusion model no installed checkpoint covers: build a zoo, train, predict."""
    from ..formats.family import FAMILY_NAMES
    from ..scan.auto import build_hint

    name = f"{'an' if family == 'sdxl' else 'a'} {FAMILY_NAMES.get(family, family)} ({family})"
    if family == "diffusion":
        return f"no bundled checkpoint fits a diffusion UNet LoRA of this kind; {build_hint(family)}"
    if family in ("sd1", "sd2"):
        return f"no bundled checkpoint fits {name} LoRA; {build_hint(family)}"
    return f"no bundled checkpoint fits {name} LoRA, and {build_hint(family)}"


def print_failure(row: dict[str, Any], model_name: str, on: Any = None) -> None:
    """An adapter that could not be scored: one error line, plus a one-line hint when it does not fit."""
    from ..scan.auto import NO_FIT, OTHER_FIT

    print_error(f"{row['source']}: {row['error']}", on=on)
    if row.get("status") == "incompatible" and not str(row.get("error") or "").startswith((NO_FIT, OTHER_FIT)):  # those say it all
        (on or err_console).print(f"  hint: {escape(fit_hint(row.get('error') or '', model_name))}", highlight=False, soft_wrap=True)


def card_meaning(card: dict[str, Any]) -> str:
    """What the checkpoint predicts, in the card's words: the first sentence of its description."""
    text = " ".join(str(card.get("description") or "").split())
    if not text:
        return ""
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def read_card_targets(info: dict[str, Any]) -> list[dict[str, Any]]:
    from pathlib import Path

    try:
        return read_card(Path(info["path"]))["targets"]
    except LolscanError:
        return []


def _show_card(card: dict[str, Any], folder: Any) -> None:
    t = Table(title=f"[bold]{card.get('name', '')}[/]", show_header=False, title_justify="left")
    t.add_column(style="cyan", no_wrap=True)
    t.add_column(overflow="fold")
    t.add_row("architecture", f"{card['architecture']} {json.dumps(card['hparams'])}")
    if isinstance(card.get("ensemble"), dict):
        t.add_row("ensemble", ensemble_line(card))
    refit = (card.get("training") or {}).get("refit")
    if isinstance(refit, dict) and refit.get("rows"):
        t.add_row("refit", f"trained again on {refit['rows']:,} LoRAs (training + validation) for "
                           f"{refit.get('ratio', 1):.3g}× each model's best step")
    t.add_row("weights", weights_line(card, folder))
    t.add_row("base model", str(card.get("base_model", "unknown")))
    t.add_row("modules", str(len(card["layer_spec"].get("layers", []))))
    for target in card["targets"]:
        desc = target["kind"] + (f", units {target['units']}" if target.get("units") else "")
        if target.get("labels"):
            desc += f", labels {', '.join(target['labels'])}"
        if target["kind"] == "regression":
            desc += f", mean {target['mean']:.4g}, std {target['std']:.4g}"
            if target.get("low") is not None and target.get("high") is not None:
                desc += f", predictions within {target['low']:.4g}–{target['high']:.4g}"
        t.add_row(f"target {target['name']}", desc)
    for split, per_target in (card.get("metrics") or {}).items():
        t.add_row(f"{split} metrics", headline_metrics(card["targets"], per_target))
    for target in card["targets"]:
        t.add_row(f"vs recipe-only {target['name']}", baseline_line((card.get("hp_baseline") or {}).get(target["name"])))
    data = card.get("training_data") or {}
    if data:
        t.add_row("training data", f"{data.get('adapters')} adapters from {data.get('manifest')}, splits {data.get('splits')} ({data.get('split_method')})")
    t.add_row("lolscan version", str(card.get("lolscan_version")))
    for k, h in enumerate(card.get("history") or [], 1):  # what the checkpoints it replaced measured
        if isinstance(h, dict):
            n = (h.get("training_data") or {}).get("adapters", "?")
            # its own metrics (an earlier training may have had another kind of target); scripts/card_history.py
            # wrote them as "test_metrics_own_split" before it wrote "test" as `lolscan train --overwrite` does
            test = h.get("test") or h.get("test_metrics_own_split") or {}
            shown = "; ".join(f"{name}: " + " ".join(f"{m}={format_metric(v)}" for m, v in vals.items() if m != "n")
                              for name, vals in test.items() if isinstance(vals, dict))
            t.add_row(f"earlier ({k})", f"{h.get('architecture')} on {n} adapters: test {shown or 'not recorded'}")
    console.print(t)


def weights_line(card: dict[str, Any], folder: Any) -> str:
    """"model.safetensors, 2.4 MB, float16" or "2 shards (model-0000K-of-00002.safetensors) and their index, 26.3 MB, float16"."""
    from ..checkpoint.shards import weight_files

    files = weight_files(folder)
    if not files:
        return "[red]missing[/]"
    size = f"{sum(f.stat().st_size for f in files) / 1e6:.1f} MB, {card.get('weights_dtype', 'float32')}"
    if len(files) == 1:
        return f"{files[0].name}, {size}"
    shards = files[:-1]
    return f"{len(shards)} shards (model-0000K-of-{len(shards):05d}.safetensors) and their index, {size}"


def ensemble_line(card: dict[str, Any]) -> str:
    """An ensemble card's members in one line: how many, their seeds, and that their outputs are averaged."""
    ens = card["ensemble"]
    seeds = ((card.get("training") or {}).get("ensemble") or {}).get("seeds")
    shown = f" at seeds {', '.join(str(s) for s in seeds)}" if isinstance(seeds, list) and seeds else ""
    return f"{ens.get('members')} models{shown}, outputs averaged (one architecture and its settings)"


def baseline_line(entry: dict[str, Any] | None) -> str:
    """A card's margin over the hyperparameter-only baseline on its test split, in one line."""
    if entry is None:
        return "not recorded (the card predates it)"
    if "none" in entry:
        return f"no baseline: {entry['none']}"
    name = METRIC_NAMES.get(entry["metric"], entry["metric"])
    lo, hi = entry["ci95"]
    return (f"{name} {format_metric(entry['checkpoint'])} against {format_metric(entry['baseline'])} for {entry['model']} on the "
            f"recipe alone ({', '.join(entry['features'])}): margin {format_metric(entry['margin'])}, 95 % CI "
            f"[{format_metric(lo)}, {format_metric(hi)}] over {entry['test_rows']} test adapters")


__all__ = ["models", "cli_errors", "open_model", "bad_parameter", "headline_metrics", "print_failure", "card_meaning"]
