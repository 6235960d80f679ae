"""The number of classes a LoRA learned, counted from a classes run's stored test probabilities (issue 18).

    python3 bench/class_count.py CLASSES.json ZOO/manifest.jsonl [--baseline N_CLASSES.json] [--regression N_REG.json]

CLASSES.json: `bench/architectures.py ZOO/manifest.jsonl -t classes … --json CLASSES.json`. Per architecture,
mean ± sd over its seeds of the test accuracy at naming `n_classes` two ways: the count of classes called
present (p ≥ 0.5) and the rounded sum of the probabilities; then the most common count's share (the prior).
--baseline: the `-t n_classes --kind n_classes=multiclass` run of the same zoo and split, whose stored
hyperparameter-only predictions (hp-ridge, hp-gbt) each count is set against, with the tables' paired bootstrap
(`lolscan.evaluation.compare.paired_bootstrap`: seeds pooled, 95 % CI). --regression: a `-t n_classes` run
without --kind (a regression on the count) of the same split, its predictions rounded to the nearest count
(1–10) and scored the same way.
"""
from __future__ import annotations

import argparse
import json
import statistics as st
from collections import Counter

import numpy as np

from lolscan.evaluation.compare import metric, paired_bootstrap

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("classes_json")
ap.add_argument("manifest")
ap.add_argument("--baseline", help="the n_classes multiclass run's JSON (its hp-* rows)")
ap.add_argument("--regression", help="an n_classes regression run's JSON: its predictions rounded, as a third count")
args = ap.parse_args()
d = json.load(open(args.classes_json))
rows = [json.loads(line) for line in open(args.manifest) if line.strip()]
true = [rows[i]["n_classes"] for i in d["test_rows"]]
base = json.load(open(args.baseline)) if args.baseline else None
if base is not None:
    assert base["test_rows"] == d["test_rows"], "the baseline run has another test split"
    labels = next(t for t in base["targets"] if t["name"] == "n_classes")["labels"]
    index = {int(c): i for i, c in enumerate(labels)}  # a count to its class index (-1: no such class)
    true_idx = np.array([index[n] for n in true], dtype=float)
    hp = {f"hp-{k}": np.asarray(v) for k, v in base["honest"]["hp"]["n_classes"]["models"].items()}
sd = (lambda xs: st.stdev(xs) if len(xs) > 1 else 0.0)


def against_recipe(what: str, counts: list[list[int]]) -> None:
    """Each seed's counts against the n_classes run's recipe-only rows: the tables' paired bootstrap, seeds pooled."""
    for name, probs in (hp.items() if base is not None else ()):
        idx = [np.array([index.get(c, -1) for c in cs], dtype=float) for cs in counts]
        diff, lo, hi = paired_bootstrap("multiclass", true_idx, idx, [probs])
        print(f"  {what} − {name} ({metric('multiclass', true_idx, probs):.3f}): {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]")


reg = json.load(open(args.regression)) if args.regression else None
if reg is not None:
    assert reg["test_rows"] == d["test_rows"], "the regression run has another test split"
    for arch, runs in reg["runs"].items():
        rounded = [[int(min(10, max(1, round(float(np.ravel(p)[0]))))) for p in run["pred"]["n_classes"]] for run in runs]
        acc = [sum(c == n for c, n in zip(cs, true)) / len(true) for cs in rounded]
        print(f"{arch} (regression on the count, rounded): {st.mean(acc):.3f} ± {sd(acc):.3f} ({len(runs)} seeds)")
        against_recipe("rounded", rounded)
for arch, runs in d["runs"].items():
    counts = {"called": [[sum(q >= 0.5 for q in p) for p in run["pred"]["classes"]] for run in runs],
              "summed": [[round(sum(p)) for p in run["pred"]["classes"]] for run in runs]}
    acc = {k: [sum(c == n for c, n in zip(cs, true)) / len(true) for cs in v] for k, v in counts.items()}
    print(f"{arch}: classes called present {st.mean(acc['called']):.3f} ± {sd(acc['called']):.3f}, "
          f"rounded sum {st.mean(acc['summed']):.3f} ± {sd(acc['summed']):.3f} ({len(runs)} seeds, {len(true)} test LoRAs)")
    against_recipe("classes called present", counts["called"])
print(f"most common count: {max(Counter(true).values()) / len(true):.3f} of the test LoRAs")
