"""A checkpoint's predictions on adapters of another kind than it was trained on (a DoRA zoo, other ranks)
against their true labels, with a bootstrap 95 % CI over adapters.

    lolscan predict DORA_ZOO/adapters --model inhouse-fashion-classes --format jsonl > pred.jsonl
    python3 bench/zoo_transfer.py DORA_ZOO/manifest.jsonl pred.jsonl --target classes

Rows are matched by the manifest's ``path`` (the prediction's source ends with it). Multilabel targets
(a list of names per adapter): mean accuracy over labels at probability 0.5 and the AUC over every
(adapter, label); binary: accuracy and AUC; regression: R² and Kendall τ.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lolscan.evaluation.metrics import auc, kendall_tau  # noqa: E402


def read_jsonl(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip().startswith("{")]


def pairs(rows: list[dict], preds: list[dict], target: str) -> list[tuple]:
    """(true label, prediction entry) per adapter found in both."""
    by_path = {r["path"].replace("\\", "/"): r for r in rows}
    out = []
    for p in preds:
        if p.get("status") != "ok" or target not in p.get("predictions", {}):
            continue
        src = p["source"].replace("\\", "/")
        hit = [r for path, r in by_path.items() if src.endswith(path)]
        if len(hit) == 1:
            out.append((hit[0][target], p["predictions"][target]))
    return out


def scores(found: list[tuple]) -> tuple[str, np.ndarray, dict]:
    """Per-adapter scores (bootstrapped) and the whole-set figures."""
    true0, pred0 = found[0]
    if isinstance(true0, list):  # multilabel
        names = sorted(pred0["probabilities"])
        t = np.array([[n in tr for n in names] for tr, _ in found])
        p = np.array([[pr["probabilities"][n] for n in names] for _, pr in found])
        per = ((p >= 0.5) == t).mean(1)
        return "mean accuracy", per, {"auc": auc(torch.tensor(p.ravel()), torch.tensor(t.ravel()))}
    if "probabilities" in pred0:  # binary / multiclass: accuracy of the predicted value
        per = np.array([float(str(pr["value"]) == str(tr)) for tr, pr in found])
        return "accuracy", per, {}
    t = np.array([float(tr) for tr, _ in found])
    p = np.array([float(pr["value"]) for _, pr in found])
    return "R²", np.stack([t, p], 1), {"kendall_tau": kendall_tau(torch.tensor(t), torch.tensor(p))}


def metric(kind: str, per: np.ndarray) -> float:
    if kind == "R²":
        t, p = per[:, 0], per[:, 1]
        return float(1 - ((t - p) ** 2).sum() / ((t - t.mean()) ** 2).sum())
    return float(per.mean())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest")
    ap.add_argument("predictions")
    ap.add_argument("--target", required=True)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    found = pairs(read_jsonl(a.manifest), read_jsonl(a.predictions), a.target)
    if not found:
        ap.error(f"no adapter of {a.predictions} with a {a.target!r} prediction is in {a.manifest}")
    kind, per, extra = scores(found)
    rng = np.random.default_rng(a.seed)
    boots = [metric(kind, per[rng.integers(0, len(per), len(per))]) for _ in range(a.bootstrap)]
    out = {"target": a.target, "n": len(found), "metric": kind, "value": metric(kind, per),
           "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))], **extra}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
