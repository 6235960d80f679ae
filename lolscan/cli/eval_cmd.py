"""`lolscan eval`: a checkpoint's metrics on a labelled manifest."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.table import Table

from ..errors import EXIT_BAD_INPUT, EXIT_INCOMPATIBLE, EXIT_OK, UsageError
from ..evaluation.metrics import HEADLINE, METRIC_NAMES, format_metric, target_metrics
from ..scan.report import SCHEMA_VERSION, clean
from ..targets import Target
from .app import app
from .console import console, err_console
from .plain import PlainCommand, examples
from .options import AllowPickle, CivitaiToken, Device, HfToken, Offline, source_options


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


def rows_for_split(m: Any, split: str, card: dict[str, Any], path: Path) -> tuple[list[Any], str]:
    """The manifest rows of ``split`` and a few words on how they were chosen.

    A split column is used as it is. Without one, a manifest the checkpoint was trained on (same
    SHA-256 as its card records) is dealt again with the card's seed and the default fractions, as
    `train` dealt it (checked against the split sizes on the card); any other manifest is unseen
    data, so `test` evaluates all of its rows.
    """
    from ..utils.files import sha256_file
    from ..manifest import assign_splits

    if split == "all":
        return m.rows, "all rows, training rows included"
    if m.has_split:
        return [r for r in m.rows if r.split == split], f"split {split} (split column)"
    data = card.get("training_data") or {}
    if data.get("manifest_sha256") != sha256_file(path):
        if split == "test":
            return m.rows, "all rows (no split column; the checkpoint was trained on another manifest)"
        raise UsageError(f"{path} has no split column and is not the manifest the checkpoint was trained on: "
                         f"--split {split} means nothing here (use test or all)")
    idx = assign_splits(m, seed=int((card.get("training") or {}).get("seed", 0)))
    want, excluded = data.get("splits") or {}, int(data.get("excluded_non_finite") or 0)
    if any(not (0 <= len(idx[s]) - int(want.get(s, -1)) <= excluded) for s in ("val", "test")):
        raise UsageError(f"{path} is the checkpoint's training manifest but its split cannot be dealt again "
                         f"(trained with other --val-fraction/--test-fraction?); add a split column or pass --split all")
    return [m.rows[i] for i in idx[split]], f"split {split}, dealt again as train did (seed {card.get('training', {}).get('seed', 0)})"


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
    from .models_cmd import cli_errors, open_model, print_failure  # lazy: keeps `models` last in the help
    from ..scan.discovery import Found
    from ..manifest import read_manifest
    from ..scan.scoring import Scorer, ScoreOptions, auto_processes

    with cli_errors():
        m = read_manifest(manifest)
        ckpt = open_model(model, device)
        rows, split_note = rows_for_split(m, split, ckpt.card, manifest)
        if not rows:
            raise UsageError(f"{manifest}: no rows to evaluate ({split_note})")
        err_console.print(f"evaluating {len(rows)} of {len(m.rows)} rows: {split_note}", highlight=False)
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
            print_failure(s, ckpt.name)
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
                from ..evaluation.calibration import coverage

                true = (y[mask][:, 0] * t.std + t.mean).tolist()
                metrics[t.name]["interval_coverage"] = coverage(scores[mask][:, 0].tolist(), true, t.interval)
        if fmt == "json":
            out = {
                "schema_version": SCHEMA_VERSION,
                "model": ckpt.info(),
                "manifest": str(manifest),
                "split": split,
                "rows": split_note,
                "adapters": len(rows),
                "scored": len(ok),
                "metrics": metrics,
                "card_test_metrics": (ckpt.card.get("metrics") or {}).get("test", {}),
                "errors": [{"source": s["source"], "status": s["status"], "error": s["error"]} for s in failures],
            }
            sys.stdout.write(json.dumps(clean(out), indent=2) + "\n")
        else:
            table = Table(title=f"{ckpt.name} on {manifest.name} ({len(ok)} of {len(rows)} adapters, {split_note})")
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
