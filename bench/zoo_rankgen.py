"""Rank generalisation table: a checkpoint's predictions vs a zoo's true labels, per adapter rank.

    lolscan predict ZOO/adapters --model smollm2-val-loss --format jsonl > pred.jsonl
    python3 bench/zoo_rankgen.py ZOO/manifest.jsonl pred.jsonl --target val_loss
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np
import torch

from lolscan.evaluation.metrics import kendall_tau


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
    print("| rank | n | true mean ± std | MSE | R² | Kendall τ | mean error |\n|---|---|---|---|---|---|---|")
    ranks = [k for k in groups if not isinstance(k, str)]
    if len(ranks) > 1:  # every one-rank adapter together: how well the order carries across ranks
        groups["all ranks"] = [x for k in ranks for x in groups[k]]
    for k in sorted(groups, key=lambda x: (isinstance(x, str), x)):
        t, p = (np.array(v) for v in zip(*groups[k]))
        r2 = 1 - ((t - p) ** 2).sum() / ((t - t.mean()) ** 2).sum()
        print(f"| {k} | {len(t)} | {t.mean():.3f} ± {t.std():.3f} | {((t - p) ** 2).mean():.5f} | {r2:.3f} | "
              f"{kendall_tau(torch.tensor(t), torch.tensor(p)):.3f} | {np.mean(p - t):+.4f} |")


if __name__ == "__main__":
    main()
