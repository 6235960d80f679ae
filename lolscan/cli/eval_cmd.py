"""`lolscan eval`: a checkpoint's metrics on a labelled manifest."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.table import Table

from ..errors import EXIT_BAD_INPUT, EXIT_INCOMPATIBLE, EXIT_OK, UsageError
from ..metrics import HEADLINE, METRIC_NAMES, format_metric, target_metrics
from ..report import SCHEMA_VERSION, clean
from ..targets import Target
from .app import app
from .console import console, err_console
from .options import AllowPickle, CivitaiToken, HfToken, Offline, source_options


def scores_from_predictions(target: Target, preds: list[dict[str, Any]]) -> Any:
    """Report predictions back to the score tensor ``Target.scores`` gives (values / probabilities)."""
    import torch

    rows = []
    for p in preds:
        if target.kind == "regression":
            rows.append([p["value"]])
        elif target.kind == "binary":
            rows.append([p["probability"]])
        else:
            rows.append([p["probabilities"][lab] for lab in target.labels])
    return torch.tensor(rows, dtype=torch.float64).reshape(len(preds), -1)


@app.command(name="eval")
def eval_(
    manifest: Annotated[Path, typer.Argument(help="CSV or JSONL with a path/uri column and the checkpoint's target columns.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Checkpoint: a path, then a user checkpoint name, then a bundled one.")] = None,
    split: Annotated[Literal["all", "train", "val", "test"], typer.Option(help="Rows to use when the manifest has a split column.")] = "all",
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", "-f", help="table or json.")] = "table",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Adapters per scoring batch.", min=1)] = 32,
    workers: Annotated[int, typer.Option(help="Threads reading files.", min=1)] = 2,
    allow_pickle: AllowPickle = False,
    offline: Offline = False,
    civitai_token: CivitaiToken = None,
    hf_token: HfToken = None,
) -> None:
    """Report a checkpoint's metrics on a labelled set (every target column the manifest has)."""
    from .models_cmd import cli_errors, open_model  # lazy: keeps `models` last in the help
    from ..discovery import Found
    from ..manifest import read_manifest
    from ..scoring import Scorer, ScoreOptions, auto_processes

    with cli_errors():
        m = read_manifest(manifest)
        rows = m.rows
        if split != "all":
            if not m.has_split:
                raise typer.BadParameter(f"{manifest} has no split column", param_hint="--split")
            rows = [r for r in rows if r.split == split]
        if not rows:
            raise UsageError(f"{manifest}: no rows to evaluate (split {split})")
        ckpt = open_model(model, device)
        targets = [t for t in ckpt.targets if t.name in m.label_columns]
        if not targets:
            raise UsageError(
                f"{manifest} has none of the checkpoint's target columns ({', '.join(t.name for t in ckpt.targets)})"
            )
        for t in ckpt.targets:
            if t not in targets:
                err_console.print(f"note: no column {t.name!r} in the manifest; not evaluated", highlight=False)
        opts = ScoreOptions(batch_size=batch_size, workers=workers, allow_pickle=allow_pickle, processes=auto_processes(len(rows)),
                            source_options=source_options(offline, civitai_token, hf_token))
        scored = list(Scorer(ckpt, opts).score([Found(r.source) for r in rows]))
        failures = [s for s in scored if s["status"] != "ok"]
        for s in failures:
            err_console.print(f"[bold red]error:[/] {s['source']}: {s['error']}", highlight=False, soft_wrap=True)
        ok = [(r, s) for r, s in zip(rows, scored) if s["status"] == "ok"]
        metrics: dict[str, dict[str, Any]] = {}
        for t in targets:
            if not ok:
                metrics[t.name] = {"n": 0}
                continue
            y, mask = t.encode([r.labels.get(t.name) for r, _ in ok])
            scores = scores_from_predictions(t, [s["predictions"][t.name] for _, s in ok])
            metrics[t.name] = target_metrics(t, scores, y, mask)
            if t.kind == "regression" and t.interval is not None and bool(mask.any()):
                from ..calibration import coverage

                true = (y[mask][:, 0] * t.std + t.mean).tolist()
                metrics[t.name]["interval_coverage"] = coverage(scores[mask][:, 0].tolist(), true, t.interval)
        if fmt == "json":
            out = {
                "schema_version": SCHEMA_VERSION,
                "model": ckpt.info(),
                "manifest": str(manifest),
                "split": split,
                "adapters": len(rows),
                "scored": len(ok),
                "metrics": metrics,
                "card_test_metrics": (ckpt.card.get("metrics") or {}).get("test", {}),
                "errors": [{"source": s["source"], "status": s["status"], "error": s["error"]} for s in failures],
            }
            sys.stdout.write(json.dumps(clean(out), indent=2) + "\n")
        else:
            table = Table(title=f"{ckpt.name} on {manifest.name} ({len(ok)} of {len(rows)} adapters, split {split})")
            for col in ("target", "kind", "n", "metric", "value", "card (test)"):
                table.add_column(col, justify="right" if col in ("n", "value", "card (test)") else "left")
            card_test = (ckpt.card.get("metrics") or {}).get("test", {})
            for t in targets:
                for k in HEADLINE[t.kind]:
                    table.add_row(t.name, t.kind, str(metrics[t.name].get("n", 0)), METRIC_NAMES[k], format_metric(metrics[t.name].get(k)),
                                  format_metric((card_test.get(t.name) or {}).get(k)))
            console.print(table)
        code = EXIT_OK
        if any(s["status"] == "incompatible" for s in failures):
            code = EXIT_INCOMPATIBLE
        elif failures:
            code = EXIT_BAD_INPUT
    raise typer.Exit(code)
