"""`lolscan eval`: a checkpoint's metrics on a labelled manifest."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.table import Table

from ..errors import EXIT_BAD_INPUT, EXIT_INCOMPATIBLE, EXIT_OK
from ..evaluation.metrics import HEADLINE, METRIC_NAMES, format_metric
from ..scan.report import SCHEMA_VERSION, clean
from .app import app
from .console import console, err_console
from .plain import PlainCommand, examples
from .options import AllowPickle, CivitaiToken, Device, HfToken, Offline, source_options


@app.command(name="eval", cls=PlainCommand, epilog=examples(
    "lolscan eval zoo/manifest.csv --model my-model",
    "lolscan eval labelled.jsonl --model smollm2-val-loss --split all -f json",
))
def eval_(
    manifest: Annotated[Path, typer.Argument(help="CSV or JSONL with a path/uri column and the checkpoint's target columns.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="NAME|PATH", help="Checkpoint: a path, then a user checkpoint name, then a bundled one.")] = None,
    split: Annotated[Literal["all", "train", "val", "test"], typer.Option(
        help="Rows to evaluate: the held-out test split by default; all includes the rows the checkpoint was trained on.")] = "test",
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", "-f", help="table or json.")] = "table",
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(help="Adapters per scoring batch.", min=1)] = 32,
    workers: Annotated[int, typer.Option(help="Threads reading files.", min=1)] = 2,
    allow_pickle: AllowPickle = False,
    offline: Offline = False,
    civitai_token: CivitaiToken = None,
    hf_token: HfToken = None,
) -> None:
    """Report a checkpoint's metrics on a labelled set (every target column the manifest has)."""
    from .models_cmd import cli_errors, print_failure  # lazy: keeps `models` last in the help
    from ..evaluation.run import evaluate

    with cli_errors():
        res = evaluate(manifest, model, split, device=device, batch_size=batch_size, workers=workers, allow_pickle=allow_pickle,
                       source_options=source_options(offline, civitai_token, hf_token),
                       note=lambda text: err_console.print(text, highlight=False), failure=print_failure)
        if fmt == "json":
            print_json(res, manifest, split)
        else:
            console.print(metrics_table(res, manifest))
        code = EXIT_OK
        if any(s["status"] == "incompatible" for s in res.failures):
            code = EXIT_INCOMPATIBLE
        elif res.failures:
            code = EXIT_BAD_INPUT
    raise typer.Exit(code)


def print_json(res: Any, manifest: Path, split: str) -> None:
    ckpt = res.ckpt
    out = {
        "schema_version": SCHEMA_VERSION,
        "model": ckpt.info(),
        "manifest": str(manifest),
        "split": split,
        "rows": res.split_note,
        "adapters": len(res.rows),
        "scored": res.scored,
        "metrics": res.metrics,
        "card_test_metrics": (ckpt.card.get("metrics") or {}).get("test", {}),
        "errors": [{"source": s["source"], "status": s["status"], "error": s["error"]} for s in res.failures],
    }
    sys.stdout.write(json.dumps(clean(out), indent=2) + "\n")


def metrics_table(res: Any, manifest: Path) -> Table:
    ckpt, metrics = res.ckpt, res.metrics
    table = Table(title=f"{ckpt.name} on {manifest.name} ({res.scored} of {len(res.rows)} adapters, {res.split_note})")
    for col in ("target", "kind", "n", "metric", "value", "card (test)"):
        table.add_column(col, justify="right" if col in ("n", "value", "card (test)") else "left")
    card_test = (ckpt.card.get("metrics") or {}).get("test", {})
    for t in res.targets:
        for k in HEADLINE[t.kind]:
            table.add_row(t.name, t.kind, str(metrics[t.name].get("n", 0)), METRIC_NAMES[k], format_metric(metrics[t.name].get(k)),
                          format_metric((card_test.get(t.name) or {}).get(k)))
    return table
