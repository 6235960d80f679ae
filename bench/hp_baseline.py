"""Does a checkpoint read the weights, or only the recipe? The honest table for a real zoo.

    python bench/hp_baseline.py MANIFEST.jsonl[.gz] -t arc_c_acc --arch-json runs/arch_*_arc_c_acc.json

Rows: every architecture saved by ``bench/architectures.py --json`` (its per-seed test predictions),
and two hyperparameter-only baselines fitted on the manifest's recipe columns alone (log10 lr,
steps, batch size, dropout, weight decay, rank, alpha and the 0/1 data-source columns): gradient-
boosted trees (scikit-learn's HistGradientBoostingRegressor, one fit per seed) and ridge on a cubic in
log lr plus the rest. Same split as training (the manifest's ``split`` column). Columns: test R²,
Kendall τ on the healthy bulk (test LoRAs with lr ≤ --healthy-lr: the recipe's healthy range, not a
cut on the label), and a paired bootstrap 95 % CI of (row − best row) over test LoRAs, metrics averaged
over the seeds. Label noise: with ``--questions N`` the label is an accuracy over N questions, whose
binomial variance p(1 − p)/N bounds the reachable R² (printed as the ceiling). Needs scikit-learn
(``pip install scikit-learn``), a bench-only dependency.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RECIPE = ("lr", "steps", "batch_size", "dropout", "weight_decay", "rank", "alpha")


def read_rows(path: Path) -> list[dict[str, Any]]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def recipe_features(row: dict[str, Any], sources: list[str]) -> list[float]:
    x = [math.log10(float(row["lr"]))] + [float(row.get(k) or 0.0) for k in RECIPE[1:]]
    return x + [float(row.get(s) or 0.0) for s in sources]


def r2(true: list[float], pred: list[float]) -> float:
    m = statistics.fmean(true)
    tot = sum((t - m) ** 2 for t in true)
    return 1.0 - sum((p - t) ** 2 for p, t in zip(pred, true)) / tot if tot > 0 else math.nan


def kendall(x: list[float], y: list[float]) -> float:
    import torch

    from lolscan.evaluation.metrics import kendall_tau

    return kendall_tau(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))


def fit_baselines(rows: list[dict[str, Any]], target: str, seeds: int) -> dict[str, list[dict[str, float]]]:
    """Per baseline, per seed ``{test id: prediction}``."""
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sources = sorted(k for k in rows[0] if k.startswith("src_"))
    train = [r for r in rows if r["split"] in ("train", "val") and r.get(target) is not None]
    test = [r for r in rows if r["split"] == "test" and r.get(target) is not None]
    X = np.array([recipe_features(r, sources) for r in train])
    y = np.array([float(r[target]) for r in train])
    Xt = np.array([recipe_features(r, sources) for r in test])

    def cubic(A: np.ndarray) -> np.ndarray:  # log lr, its square and cube, then the rest
        return np.column_stack([A[:, 0], A[:, 0] ** 2, A[:, 0] ** 3, A[:, 1:]])

    out: dict[str, list[dict[str, float]]] = {"hp-trees": [], "hp-ridge": []}
    for seed in range(seeds):
        trees = HistGradientBoostingRegressor(random_state=seed).fit(X, y)
        out["hp-trees"].append(dict(zip((r["id"] for r in test), trees.predict(Xt).tolist())))
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))).fit(cubic(X), y)
    preds = dict(zip((r["id"] for r in test), ridge.predict(cubic(Xt)).tolist()))
    out["hp-ridge"] = [preds] * seeds  # deterministic: the same fit for every seed
    return out


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
    args = ap.parse_args()

    rows = read_rows(args.manifest)
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
    healthy = [k for k, i in enumerate(ids) if float(by_id[i]["lr"]) <= args.healthy_lr]

    def metric(preds: list[dict[str, float]], idx: list[int]) -> float:
        return statistics.fmean(r2([true[k] for k in idx], [p[ids[k]] for k in idx]) for p in preds)

    all_idx = list(range(len(ids)))
    table = {}
    for name, preds in runs.items():
        r2s = [r2(true, [p[i] for i in ids]) for p in preds]
        taus = [kendall([p[ids[k]] for k in healthy], [true[k] for k in healthy]) for p in preds]
        table[name] = {"r2": statistics.fmean(r2s), "r2_sd": statistics.stdev(r2s) if len(r2s) > 1 else 0.0,
                       "tau": statistics.fmean(taus), "seeds": len(preds)}
    best = max(table, key=lambda k: table[k]["r2"])
    rng = random.Random(0)
    boots = [[rng.randrange(len(ids)) for _ in ids] for _ in range(args.bootstrap)]
    for name in table:
        if name == best:
            continue
        diffs = sorted(metric(runs[name], b) - metric(runs[best], b) for b in boots)
        table[name]["ci"] = (diffs[int(0.025 * len(diffs))], diffs[int(0.975 * len(diffs)) - 1])
        table[name]["diff"] = metric(runs[name], all_idx) - metric(runs[best], all_idx)
    print(f"{args.target}: {len(ids)} test LoRAs ({len(healthy)} healthy: lr <= {args.healthy_lr:g}); "
          f"label sd {statistics.pstdev(true):.4g}", file=sys.stderr)
    if args.questions:
        noise = statistics.fmean(t * (1 - t) / args.questions for t in true)
        ceiling = 1 - noise / statistics.pvariance(true)
        print(f"label noise (binomial over {args.questions} questions): sd {math.sqrt(noise):.4g}; "
              f"R² ceiling {ceiling:.3f}", file=sys.stderr)
    head = ["row", "test R²", f"Kendall τ (lr ≤ {args.healthy_lr:g})", "seeds", f"row − {best} [95 % CI]"]
    lines = []
    for name, t in sorted(table.items(), key=lambda kv: -kv[1]["r2"]):
        ci = "best row" if name == best else f"{t['diff']:+.3f} [{t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}]"
        lines.append([name, f"{t['r2']:.3f} ± {t['r2_sd']:.3f}", f"{t['tau']:.3f}", str(t["seeds"]), ci])
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        for line in [head] + lines:
            print("  ".join(line))


if __name__ == "__main__":
    main()
