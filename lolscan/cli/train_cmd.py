"""`lolscan train`: fit a checkpoint (or all five architectures side by side) on a labelled manifest."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.table import Table

from ..evaluation.metrics import HEADLINE, METRIC_NAMES, format_metric
from ..nets.names import ARCHITECTURES
from .app import app
from .console import console, err_console
from .plain import PlainCommand, examples
from .options import AllowPickle, CivitaiToken, Device, HfToken, Offline, source_options


def parse_pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint=flag)
        out[key.strip()] = value.strip()
    return out


def label_options(kind: list[str], units: list[str], count: list[str]) -> dict[str, Any]:
    """``--kind``, ``--units`` and ``--count`` as `training.prepare` takes them. ``--count
    dataset_size=classes:7``: the target dataset_size is 7 × the number of labels called present by a
    head trained on the label sets of column ``classes`` (PER_LABEL 1 when left out)."""
    from ..errors import UsageError
    from ..targets import parse_count

    try:
        counts = {name: parse_count(name, spec) for name, spec in parse_pairs(count, "--count").items()}
    except UsageError as exc:
        raise typer.BadParameter(str(exc), param_hint="--count") from None
    return {"kinds": parse_pairs(kind, "--kind"), "units": parse_pairs(units, "--units"), "counts": counts}


def parse_lr(text: str) -> float | None:
    """``--lr``: a positive number, or ``auto`` (None: `lolscan.training.train` chooses it by validation loss)."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise typer.BadParameter(f"{text!r}: expected a positive number or auto", param_hint="--lr")
    return value


def parse_hparams(items: list[str]) -> dict[str, Any]:
    """``--hparam d=16 --hparam pool=mean``: values are JSON where they parse, else strings."""
    out: dict[str, Any] = {}
    for key, value in parse_pairs(items, "--hparam").items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def metrics_table(results: dict[str, dict[str, Any]], targets: list[Any], title: str, comparison: dict[str, Any] | None = None) -> Table:
    """Rows: target × headline metric (regression: MSE, R², Kendall τ; classes: accuracy, AUC;
    multilabel: mean accuracy, AUC), then (with ``comparison``, `training_run.compare_results`) Kendall
    τ on the healthy test rows and each column's paired bootstrap 95 % CI against the best column;
    one column per architecture, then the hyperparameter-only baselines."""
    cols = dict(results) | ((comparison or {}).get("baselines") or {})
    table = Table(title=title, caption=comparison_caption(comparison) if comparison else None, caption_justify="left")
    table.add_column("target")
    table.add_column("metric")
    for arch in cols:
        table.add_column(arch, justify="right")
    for t in targets:
        for m in HEADLINE[t.kind]:
            cells = []
            for res in cols.values():
                test = (res.get("metrics") or {}).get("test", {})
                cells.append(format_metric((test.get(t.name) or {}).get(m)) if "error" not in res else "–")
            table.add_row(t.name, METRIC_NAMES[m], *cells)
        for label, cells in honest_rows(t, list(cols), comparison):
            table.add_row(t.name, label, *cells)
    table.add_row("", "steps (best)", *[("skipped" if "error" in r else f"{r['steps']} ({best_steps(r)})" if "steps" in r else "") for r in cols.values()])
    if any("lr" in r for r in cols.values()):
        table.add_row("", "lr", *[(f"{r['lr']:g}" + (" (auto)" if r.get("lr_search") else "") if "lr" in r else "") for r in cols.values()])
    table.add_row("", "seconds", *[("" if "error" in r or "seconds" not in r else f"{r['seconds']:.1f}") for r in cols.values()])
    return table


def best_steps(r: dict[str, Any]) -> str:
    """The best step, or each target's where they differ (per-target early stopping): "50 / 600"."""
    steps = r.get("best_steps") or {}
    if len(set(steps.values())) > 1:
        return " / ".join(str(s) for s in steps.values())
    return str(r["best_step"])


def honest_rows(t: Any, names: list[str], comparison: dict[str, Any] | None) -> list[tuple[str, list[str]]]:
    """A target's τ on the healthy rows and (row − best row) [95 % CI], one cell per column."""
    entry = ((comparison or {}).get("targets") or {}).get(t.name)
    if not entry or entry["best"] is None:
        return []
    rows, best, out = entry["rows"], entry["best"], []
    if t.kind == "regression" and entry.get("healthy_rows") is not None:
        label = f"τ, lr ≤ {comparison['healthy_lr']:.2g} ({entry['healthy_rows']})"
        out.append((label, [format_metric(rows[n].get("tau_healthy")) if n in rows else "–" for n in names]))
    metric = METRIC_NAMES[next(iter(rows.values()))["metric"]]

    def cell(n: str) -> str:
        if n not in rows:
            return "–"
        if n == best:
            return "best"
        d, (lo, hi) = rows[n]["diff"], rows[n]["ci95"]
        return "–" if None in (d, lo, hi) else f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    out.append((f"{metric} − best [95 % CI]", [cell(n) for n in names]))
    return out


def comparison_caption(comparison: dict[str, Any]) -> str:
    """What the hp- columns are, or plainly that there are none."""
    from ..evaluation.compare import gbt_available

    if not comparison.get("baselines"):
        why = "; ".join(comparison.get("no_baseline") or []) or "none fitted"
        return f"No hyperparameter-only baseline: {why}."
    trees = "hp-gbt: gradient-boosted trees (scikit-learn)" if gbt_available() else "no hp-gbt: scikit-learn is not installed"
    return ("hp-ridge, hp-gbt: hyperparameter-only baselines, fitted on the train+val rows' recipe (log10 lr, steps, "
            f"batch size, dropout, weight decay, rank, alpha, dataset size, data columns src_*/cls_*/sty_*) without reading a weight; hp-ridge: ridge on a "
            f"cubic in log lr; {trees}. CIs: paired bootstrap over test adapters, 2000 resamples.")


@app.command(cls=PlainCommand, epilog=examples(
    "lolscan zoo synth toy",
    "lolscan train toy/manifest.csv -t score -t big --out my-model --device cpu",
    "lolscan train zoo.csv -t val_loss --arch all",
    "lolscan train zoo.jsonl -t val_loss --arch mlp-svd --hparam k=4 --units val_loss=nats --out ./ckpt",
))
def train(
    manifest: Annotated[Path, typer.Argument(help="CSV or JSONL: a path/uri column, label columns, optional split or group column.")],
    target: Annotated[list[str], typer.Option("--target", "-t", metavar="COLUMN", help="Label column to predict (repeatable).")],
    arch: Annotated[Literal[(*ARCHITECTURES, "all")], typer.Option("--arch", help="Architecture, or 'all' to compare all five.")] = "glnet",
    out: Annotated[Optional[str], typer.Option("--out", "-o", metavar="NAME|PATH", help="Checkpoint NAME (user data folder) or a PATH (contains a slash). With --arch all: NAME-<arch> each.")] = None,
    kind: Annotated[list[str], typer.Option("--kind", metavar="COL=KIND", help="Override a target's kind: COL=regression|binary|multiclass|multilabel.")] = [],
    units: Annotated[list[str], typer.Option("--units", metavar="COL=UNITS", help="Units of a regression or count target, shown in reports: COL=UNITS.")] = [],
    count: Annotated[list[str], typer.Option("--count", metavar="COL=SOURCE:K", help="Make target COL a count: a head trained on the label sets of column SOURCE whose value is K × the labels it calls present (a class-subset zoo's dataset size: dataset_size=classes:7).")] = [],
    hparam: Annotated[list[str], typer.Option("--hparam", metavar="KEY=VALUE", help="Architecture hyperparameter KEY=VALUE (JSON value), e.g. d=16.")] = [],
    seed: Annotated[int, typer.Option(help="Seed for the split, initialisation and batch order.")] = 0,
    steps: Annotated[int, typer.Option(help="Maximum optimiser steps.", min=1)] = 2000,
    batch_size: Annotated[int, typer.Option(help="Minibatch size.", min=1)] = 32,
    lr: Annotated[str, typer.Option(metavar="LR|auto", help="AdamW learning rate, or auto: the one of 3e-4, 1e-3, 3e-3 with the lowest validation loss (from 1e-3, first down, on while it falls; recorded in the card).")] = "auto",
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-4,
    patience: Annotated[int, typer.Option(help="Validation checks without improvement before stopping.", min=1)] = 12,
    eval_every: Annotated[int, typer.Option(help="Steps between validation checks.", min=1)] = 25,
    val_fraction: Annotated[float, typer.Option(help="Validation share when there is no split column.", min=0.0, max=0.9)] = 0.15,
    test_fraction: Annotated[float, typer.Option(help="Test share when there is no split column.", min=0.0, max=0.9)] = 0.15,
    device: Device = "auto",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (1 is often fastest for small models).", min=1)] = None,
    workers: Annotated[int, typer.Option(help="Threads reading adapter files.", min=1)] = 4,
    base_model: Annotated[Optional[str], typer.Option("--base-model", help="Base model family for the card (default: guessed from the adapters).")] = None,
    description: Annotated[str, typer.Option(help="Free text stored in the card.")] = "",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing checkpoint of the same name.")] = False,
    ensemble: Annotated[int, typer.Option("--ensemble", metavar="K", help="Average K models trained at seeds SEED … SEED+K−1 with the settings chosen at SEED (K times the training time; intervals and temperatures fitted on the average).")] = 1,
    refit: Annotated[bool, typer.Option("--refit", help="Once validation has chosen the settings, lr and steps, train every model again on the training and validation rows for as many epochs (calibration and validation metrics stay from before).")] = False,
    weights_dtype: Annotated[Literal["float32", "float16", "bfloat16"], typer.Option("--weights-dtype", help="Precision of the checkpoint's stored weights: float16 or bfloat16 halve model.safetensors; the weights are rounded before calibration and the test metrics, so the card measures what it ships.")] = "float32",
    max_shard_size: Annotated[Optional[str], typer.Option("--max-shard-size", metavar="SIZE", help="Split weights larger than SIZE (e.g. 16MB, 10MiB) into model-0000K-of-0000N.safetensors shards with model.safetensors.index.json, as transformers does; for hosts that cap a file's size.")] = None,
    clamp: Annotated[bool, typer.Option("--clamp/--no-clamp", help="Keep regression predictions within the range of the training labels (recorded in the card), as trees do; --no-clamp where values past it must be predicted.")] = True,
    transform: Annotated[Literal["auto", "none", "log"], typer.Option("--transform", help="Regression targets: auto = also try log(y) for positive, heavy-tailed ones (max/median ≥ 20) and keep it when validation prefers it; none; log = every positive one.")] = "auto",
    healthy_lr: Annotated[Optional[float], typer.Option("--healthy-lr", help="Kendall τ on the test LoRAs trained with lr ≤ this (manifest's lr column; default: the zoo's median lr).", min=0.0)] = None,
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", "-f", help="Result table or JSON on stdout.")] = "table",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")] = True,
    allow_pickle: AllowPickle = False,
    offline: Offline = False,
    civitai_token: CivitaiToken = None,
    hf_token: HfToken = None,
) -> None:
    """Train a checkpoint that predicts TARGET columns from adapter weights; report held-out test metrics."""
    from .models_cmd import cli_errors  # lazy: keeps `models` last in the help
    from ..training import TrainOptions
    from ..checkpoint.shards import parse_size
    from ..training_run import compare_results, destinations, train_each

    progress = progress and err_console.is_terminal  # a bar off a terminal only leaves blank lines
    labels, hparams = label_options(kind, units, count), parse_hparams(hparam)
    if arch != "all" and not out:
        raise typer.BadParameter("name the checkpoint to write, e.g. --out my-model", param_hint="--out")
    if val_fraction + test_fraction >= 0.95:
        raise typer.BadParameter("val and test fractions leave no training data", param_hint="--val-fraction/--test-fraction")
    learning_rate = parse_lr(lr)
    if ensemble < 1:
        raise typer.BadParameter(f"{ensemble}: expected a number of models ≥ 1", param_hint="--ensemble")
    archs = list(ARCHITECTURES) if arch == "all" else [arch]
    with cli_errors():
        from ..utils.device import resolve_device

        resolve_device(device)  # fail before reading the zoo
        dests, shard = destinations(out, archs, arch == "all", overwrite), parse_size(max_shard_size) if max_shard_size else None
        ds = prepare_dataset(manifest, target, **labels, seed=seed, val_fraction=val_fraction,
                             test_fraction=test_fraction, workers=workers, allow_pickle=allow_pickle, base_model=base_model,
                             progress=progress, source_options=source_options(offline, civitai_token, hf_token))
        sizes = {s: len(v) for s, v in ds.splits.items()}
        base = TrainOptions(seed=seed, max_steps=steps, batch_size=batch_size, lr=learning_rate, weight_decay=weight_decay, transform=transform,
                            eval_every=eval_every, patience=patience, device=device, progress=progress, threads=threads,
                            ensemble=ensemble, weights_dtype=weights_dtype, refit=refit, clamp=clamp)
        hp = fit_baseline(ds)
        results = train_each(
            ds, archs, hparams, base, every=arch == "all", dests=dests, overwrite=overwrite, description=description, hp=hp, max_shard_bytes=shard,
            skipped=lambda a, exc: err_console.print(f"[yellow]skipped {a}:[/] {exc}", highlight=False),
            saved=lambda name, path: err_console.print(f"wrote checkpoint [bold]{name}[/] to {path} (plot: {path / 'pred_vs_true.png'})", highlight=False),
        )
        report_choices(results)
        comparison = compare_results(ds, results, hp, healthy_lr=healthy_lr)
        if fmt == "json":
            print(json.dumps({"schema_version": 1, "targets": [t.to_json() for t in ds.targets], "splits": sizes, "results": results,
                              "comparison": comparison}, indent=2, default=str))
        else:
            title = "test-split metrics" + (f" ({sizes['test']} adapters)" if sizes["test"] else " (no test split)")
            console.print(metrics_table(results, ds.targets, title, comparison))


def report_choices(results: dict[str, Any]) -> None:
    """On stderr, per architecture: the learning rate the validation search chose and the targets fitted on the log."""
    for a, r in results.items():
        if r.get("lr_search"):
            err_console.print(f"{a}: lr {r['lr']:g} chosen by validation loss (tried "
                              + ", ".join(f"{e['lr']:g}: {e['val_loss']:.4g}" for e in r["lr_search"]) + ")", highlight=False)
        if r.get("log_targets"):
            err_console.print(f"{a}: fitted {', '.join(r['log_targets'])} on the log (positive and heavy-tailed; "
                              "validation MSE in user units preferred it)", highlight=False)


def fit_baseline(ds: Any) -> dict[str, Any]:
    """The hyperparameter-only baseline (`lolscan.baseline.fit`), announced on stderr: it can take seconds."""
    from ..baseline import fit

    with err_console.status("fitting the hyperparameter-only baselines", spinner="dots"):
        return fit(ds)


def prepare_dataset(manifest: Path, target: list[str], **kwargs: Any) -> Any:
    """The labelled dataset `training.prepare` reads from the manifest, described in a line or two on stderr."""
    from ..manifest import read_manifest
    from ..training import prepare

    ds = prepare(read_manifest(manifest), target, **kwargs)
    sizes = {s: len(v) for s, v in ds.splits.items()}
    if ds.excluded:
        err_console.print(f"[yellow]warning:[/] left out {len(ds.excluded)} adapter(s) whose factors hold NaN/Inf "
                          f"(a diverged finetune), e.g. {ds.excluded[0]}", highlight=False)
    err_console.print(
        f"{len(ds.adapters)} adapters ({sizes['train']} train / {sizes['val']} val / {sizes['test']} test, split by {ds.split_method}), "
        f"{len(ds.spec)} modules, base model {ds.base_model}; targets: " + ", ".join(t.describe() for t in ds.targets),
        highlight=False,
    )
    return ds
