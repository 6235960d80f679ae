"""Rank generalisation table: a checkpoint's predictions vs a zoo's true labels, per adapter rank.

    lolscan predict ZOO/adapters --model smollm2-val-loss --format jsonl > pred.jsonl
    python3 bench/zoo_rankgen.py ZOO/manifest.jsonl pred.jsonl --target val_loss
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    i, j = np.triu_indices(len(a), 1)
    return float(np.mean(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest")
    ap.add_argument("predictions")
    ap.add_argument("--target", default="val_loss")
    a = ap.parse_args()
    rows = {r["id"]: r for r in map(json.loads, filter(str.strip, open(a.manifest)))}
    pred = {}
    for line in open(a.predictions):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("status") == "ok":
            pred[r["source"].rstrip("/").split("/")[-1]] = r["predictions"][a.target]["value"]
    groups: dict = defaultdict(list)
    for i, r in rows.items():
        if i in pred:
            groups["mixed" if r.get("mixed_rank") else r["rank"]].append((r[a.target], pred[i]))
    print(f"| rank | n | true mean ± std | MSE | R² | Kendall τ | mean error |\n|---|---|---|---|---|---|---|")
    for k in sorted(groups, key=lambda x: (isinstance(x, str), x)):
        t, p = (np.array(v) for v in zip(*groups[k]))
        r2 = 1 - ((t - p) ** 2).sum() / ((t - t.mean()) ** 2).sum()
        print(f"| {k} | {len(t)} | {t.mean():.3f} ± {t.std():.3f} | {((t - p) ** 2).mean():.5f} | {r2:.3f} | "
              f"{kendall_tau(t, p):.3f} | {np.mean(p - t):+.4f} |")


if __name__ == "__main__":
    main()
