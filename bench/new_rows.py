"""A shipped checkpoint on LoRAs built after it was trained, against the recipe fitted on the LoRAs before them.

    python3 bench/new_rows.py OLD_MANIFEST.jsonl[.gz] ZOO/manifest.jsonl --model NAME [--healthy-lr 1e-3]

The rows of ZOO's manifest whose ids OLD lacks (a later lease's LoRAs: no checkpoint trained on the zoo so far has
seen them, whatever their split) are scored by the checkpoint (as `lolscan eval` scores them) and by the
hyperparameter-only baselines (`lolscan.evaluation.compare`: ridge, and trees where scikit-learn is installed)
fitted on every labelled row of OLD. One table per target of the checkpoint: the headline metric, Kendall τ on the
healthy rows (lr ≤ --healthy-lr, regression) and the paired bootstrap 95 % CI against the best row. Out-of-sample
twice over: new LoRAs, and for a zoo built over several leases possibly another GPU model than labelled OLD.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hp_baseline import read_rows  # noqa: E402  (bench/ on the path first)

BASELINE_NAMES = {"gbt": "hp-trees", "ridge": "hp-ridge"}  # the baselines' rows in these tables


def checkpoint_scores(manifest: Path, model: str, ids: set[str]) -> tuple[Any, dict[str, dict[str, Any]]]:
    """The checkpoint and, per target, {adapter id: score vector} over the manifest rows in ``ids``."""
    from lolscan.evaluation.run import scores_from_predictions
    from lolscan.manifest import read_manifest
    from lolscan.scan.discovery import Found
    from lolscan.scan.run import open_checkpoint
    from lolscan.scan.scoring import ScoreOptions, Scorer

    m = read_manifest(manifest)
    ckpt = open_checkpoint(model, "cpu")
    rows = [r for r in m.rows if Path(str(r.source)).name in ids]  # a zoo's rows: path adapters/ID
    scored = list(Scorer(ckpt, ScoreOptions(batch_size=32, workers=2)).score([Found(r.source) for r in rows]))
    bad = [s for s in scored if s["status"] != "ok"]
    if bad:
        sys.exit(f"error: {len(bad)} adapters could not be scored: {bad[0]}")
    out = {}
    for t in ckpt.targets:
        sc = scores_from_predictions(t, [s["predictions"][t.name] for s in scored]).numpy()
        out[t.name] = {Path(str(r.source)).name: sc[i] for i, r in enumerate(rows)}
    return ckpt, out


def recipe_table(t: Any, rows: list[dict[str, Any]], fit: list[dict[str, Any]], scores: dict[str, dict[str, Any]],
                 *, healthy_lr: float, reps: int) -> tuple[dict[str, dict[str, Any]], str | None, list[int] | None, list[str] | None]:
    """One target's honest table over ``rows``: each checkpoint's scores (``scores``: row label → {adapter id: score
    vector}) beside the hyperparameter-only baselines (ridge, and trees where scikit-learn is installed) fitted on
    ``fit``, with Kendall τ on the healthy rows (lr ≤ ``healthy_lr``, regression) and the paired bootstrap CI against
    the best row (`lolscan.evaluation.compare.compare_rows`). Returns (table, best row, healthy positions, recipe
    columns); without an lr column there are no baseline rows and the columns are None."""
    import numpy as np

    from lolscan.baseline import truth
    from lolscan.evaluation.compare import (compare_rows, fit_hp_baseline, gbt_available, healthy_rows,
                                            recipe_columns, recipe_matrix)

    y, y_fit = (truth(t, [r[t.column] for r in rs]) for rs in (rows, fit))  # units; 0/1 labels or class indices
    runs = {}
    for label, s in scores.items():
        ck = np.stack([s[r["id"]] for r in rows])
        runs[label] = [ck.reshape(-1) if t.kind in ("regression", "binary") else ck]
    cols = recipe_columns(list(dict.fromkeys(k for r in fit for k in r)), t.column, t.kind, t.labels)
    if cols is not None:
        models = ["gbt", "ridge"] if gbt_available() else ["ridge"]
        base = fit_hp_baseline(t.kind, recipe_matrix(fit, cols), y_fit, recipe_matrix(rows, cols), cols,
                               classes=len(t.labels), models=models)
        runs |= {BASELINE_NAMES[m]: [p] for m, p in base.items()}
    healthy = healthy_rows([r["lr"] for r in rows], healthy_lr) if t.kind == "regression" and cols else None
    table, best = compare_rows(t.kind, y, runs, healthy=healthy, reps=reps)
    return table, best, healthy, cols


def print_table(table: dict[str, dict[str, Any]], best: str | None) -> None:
    """`recipe_table`'s rows, best first, each with its difference to the best row and that CI."""
    for name, s in sorted(table.items(), key=lambda kv: -kv[1]["mean"]):
        ci = "best row" if name == best else f"{s['diff']:+.3f} [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]"
        tau = f"  healthy τ {s['tau_healthy']:.3f}" if "tau_healthy" in s else ""
        print(f"  {name:40s} {s['metric']} {s['mean']:.3f}{tau}  row − {best}: {ci}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path, help="the manifest of the LoRAs before (the baselines are fitted on all of it)")
    ap.add_argument("manifest", type=Path, help="a zoo's manifest.jsonl (its adapters beside it)")
    ap.add_argument("--model", "-m", required=True)
    ap.add_argument("--healthy-lr", type=float, default=1e-3)
    ap.add_argument("--bootstrap", type=int, default=2000)
    args = ap.parse_args()

    old, new = read_rows(args.old), read_rows(args.manifest)
    known = {r["id"] for r in old}
    fresh = [r for r in new if r["id"] not in known]
    if not fresh:
        sys.exit(f"error: every row of {args.manifest} is in {args.old}: no new LoRAs")
    ckpt, scores = checkpoint_scores(args.manifest, args.model, {r["id"] for r in fresh})
    for t in ckpt.targets:
        rows = [r for r in fresh if r.get(t.column) is not None and r["id"] in scores[t.name]]
        fit = [r for r in old if r.get(t.column) is not None]
        table, best, healthy, cols = recipe_table(t, rows, fit, {ckpt.name: scores[t.name]},
                                                  healthy_lr=args.healthy_lr, reps=args.bootstrap)
        if cols is None:
            sys.exit("error: no lr column: no recipe to fit a baseline on")
        print(f"{t.name}: {len(rows)} new LoRAs ({len(healthy or [])} healthy), baselines fitted on {len(fit)} "
              f"earlier rows; recipe columns: {', '.join(cols)}")
        print_table(table, best)

if __name__ == "__main__":
    main()
