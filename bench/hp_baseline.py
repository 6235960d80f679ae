"""Does a checkpoint read the weights, or only the recipe? The honest table for a real zoo.

    python bench/hp_baseline.py MANIFEST.jsonl[.gz] -t arc_c_acc --arch-json runs/arch_*_arc_c_acc.json

Rows: every architecture saved by ``bench/architectures.py --json`` (its per-seed test predictions),
and two hyperparameter-only baselines fitted on the manifest's recipe columns alone (log10 lr,
steps, batch size, dropout, weight decay, rank, alpha and the 0/1 data-source columns): gradient-
boosted trees (scikit-learn's HistGradientBoostingRegressor, one fit per seed) and ridge on a cubic in
log lr plus the rest. Same split as training (the manifest's ``split`` column). Columns: test R²,
Kendall τ on the healthy bulk (test LoRAs with lr ≤ --healthy-lr: the recipe's healthy range, not a
cut on the label), and a paired bootstrap 95 % CI of (row − best row) over test LoRAs, metrics averaged
over the seeds. ``--cv K`` (a pilot without enough test rows): recipe-only R² by K-fold cross-validation
instead, over all LoRAs and the healthy and damaging ones apart. Label noise: with ``--questions N`` the
label is an accuracy over N questions, whose binomial variance p(1 − p)/N bounds the reachable R² (printed as the ceiling). The trees need scikit-learn
(``pip install scikit-learn``), a bench-only dependency; without it the table has the ridge row alone.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lolscan.evaluation.compare import compare_rows, healthy_rows  # noqa: E402

def read_rows(path: Path) -> list[dict[str, Any]]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def fit_baselines(rows: list[dict[str, Any]], target: str, seeds: int) -> dict[str, list[dict[str, float]]]:
    """Per baseline, per seed ``{test id: prediction}`` (lolscan.evaluation.compare fits them; both are
    deterministic below 10,000 rows, so one fit stands for every seed). Without scikit-learn (a GPU
    machine may lack it) the trees are left out, said on stderr, and ridge stands alone."""
    import numpy as np

    from lolscan.evaluation.compare import fit_hp_baseline, gbt_available, recipe_columns, recipe_matrix

    columns = recipe_columns(list(dict.fromkeys(k for r in rows for k in r)), target)
    if columns is None:
        sys.exit("error: the manifest has no lr column: no recipe to fit a hyperparameter-only baseline on")
    train = [r for r in rows if r["split"] in ("train", "val") and r.get(target) is not None]
    test = [r for r in rows if r["split"] == "test" and r.get(target) is not None]
    y = np.array([float(r[target]) for r in train])
    models = ["gbt", "ridge"] if gbt_available() else ["ridge"]
    if "gbt" not in models:
        print("scikit-learn is not installed: no hp-trees row (pip install scikit-learn)", file=sys.stderr)
    preds = fit_hp_baseline("regression", recipe_matrix(train, columns), y, recipe_matrix(test, columns), columns,
                            models=models)
    ids = [r["id"] for r in test]
    names = {"gbt": "hp-trees", "ridge": "hp-ridge"}
    return {names[m]: [dict(zip(ids, preds[m].tolist()))] * seeds for m in models}


def cross_validated(rows: list[dict[str, Any]], target: str, folds: int, where: str) -> str:
    """Recipe-only R² by ``folds``-fold cross-validation over every row with the label (splits ignored):
    for a pilot too small for a test split. The same baselines and recipe columns as the tables, each fold
    fitted on the others; the out-of-fold predictions are scored together."""
    import numpy as np

    from lolscan.evaluation.compare import fit_hp_baseline, gbt_available, metric, recipe_columns, recipe_matrix

    rows = [r for r in rows if r.get(target) is not None]
    columns = recipe_columns(list(dict.fromkeys(k for r in rows for k in r)), target)
    if columns is None:
        sys.exit("error: the manifest has no lr column: no recipe to fit a hyperparameter-only baseline on")
    if len(rows) < 2 * folds:
        sys.exit(f"error: {len(rows)} rows {where}: too few for {folds} folds")
    y = np.array([float(r[target]) for r in rows])
    X = recipe_matrix(rows, columns)
    fold = np.random.default_rng(0).permutation(len(rows)) % folds
    models = ["ridge", "gbt"] if gbt_available() else ["ridge"]
    pred = {m: np.zeros(len(rows)) for m in models}
    for k in range(folds):
        te, tr = fold == k, fold != k
        for m, p in fit_hp_baseline("regression", X[tr], y[tr], X[te], columns, models=models).items():
            pred[m][te] = p
    r2 = {m: metric("regression", y, p) for m, p in pred.items()}
    names = {"gbt": "trees", "ridge": "ridge"}
    return (f"{target} {where}: n {len(rows)}, mean {y.mean():.4g}, sd {y.std():.4g}; recipe-only {folds}-fold R² "
            + ", ".join(f"{names[m]} {r2[m]:.3f}" for m in models))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", type=Path)
    ap.add_argument("-t", "--target", required=True)
    ap.add_argument("--arch-json", nargs="*", type=Path, default=[], help="bench/architectures.py --json files (this target)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--healthy-lr", type=float, default=1e-3)
    ap.add_argument("--questions", type=int, default=0, help="the label is an accuracy over this many questions")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--cv", type=int, default=0, metavar="K",
                    help="instead of the test-split table: recipe-only R² by K-fold cross-validation over every "
                         "LoRA, and over the healthy (lr ≤ --healthy-lr) and damaging ones apart")
    args = ap.parse_args()

    rows = read_rows(args.manifest)
    if args.cv:
        h = args.healthy_lr
        for where, sub in (("all", rows), (f"lr <= {h:g}", [r for r in rows if r["lr"] <= h]),
                           (f"lr > {h:g}", [r for r in rows if r["lr"] > h])):
            print(cross_validated(sub, args.target, args.cv, where))
        return
    by_id = {r["id"]: r for r in rows}
    runs: dict[str, list[dict[str, float]]] = {}
    test_ids: list[str] | None = None
    for path in args.arch_json:
        d = json.loads(path.read_text())
        ids = d["test_sources"]
        test_ids = test_ids or ids
        if ids != test_ids:
            sys.exit(f"error: {path}: another test split than the first --arch-json")
        for arch, rs in d["runs"].items():
            for r in rs:
                runs.setdefault(arch, []).append(dict(zip(ids, r["pred"][args.target])))
    baselines = fit_baselines(rows, args.target, args.seeds)
    ids = test_ids or list(next(iter(baselines.values()))[0])
    runs |= baselines
    true = [float(by_id[i][args.target]) for i in ids]
    healthy = healthy_rows([by_id[i]["lr"] for i in ids], args.healthy_lr)
    arrays = {name: [[p[i] for i in ids] for p in preds] for name, preds in runs.items()}
    table, best = compare_rows("regression", true, arrays, healthy=healthy, reps=args.bootstrap)
    if best is None:  # R² needs two distinct labels: a test split of one LoRA (a tiny rehearsal) has none
        sys.exit(f"error: no row has a finite test R² on {len(ids)} test LoRAs ({args.target}): too few to compare "
                 "(--cv K scores a small zoo by cross-validation)")
    print(f"{args.target}: {len(ids)} test LoRAs ({len(healthy)} healthy: lr <= {args.healthy_lr:g}); "
          f"label sd {statistics.pstdev(true):.4g}", file=sys.stderr)
    if args.questions and not all(0.0 <= t <= 1.0 for t in true):
        sys.exit(f"error: --questions: {args.target} is not an accuracy (labels outside [0, 1]); leave it out")
    if args.questions:
        noise = statistics.fmean(t * (1 - t) / args.questions for t in true)
        ceiling = 1 - noise / statistics.pvariance(true)
        print(f"label noise (binomial over {args.questions} questions): sd {math.sqrt(noise):.4g}; "
              f"R² ceiling {ceiling:.3f}", file=sys.stderr)
    head = ["row", "test R²", f"Kendall τ (lr ≤ {args.healthy_lr:g})", "seeds", f"row − {best} [95 % CI]"]
    lines = []
    for name, t in sorted(table.items(), key=lambda kv: -kv[1]["mean"]):
        ci = "best row" if name == best else f"{t['diff']:+.3f} [{t['ci95'][0]:+.3f}, {t['ci95'][1]:+.3f}]"
        lines.append([name, f"{t['mean']:.3f} ± {t['sd']:.3f}", f"{t['tau_healthy']:.3f}", str(t["seeds"]), ci])
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        for line in [head] + lines:
            print("  ".join(line))


if __name__ == "__main__":
    main()
