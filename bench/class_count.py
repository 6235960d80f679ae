"""The number of classes a LoRA learned, counted from a classes run's stored test probabilities (issue 18).

    python3 bench/class_count.py CLASSES.json ZOO/manifest.jsonl

CLASSES.json: `bench/architectures.py ZOO/manifest.jsonl -t classes … --json CLASSES.json`. Per architecture,
mean ± sd over its seeds of the test accuracy at naming `n_classes` two ways: the count of classes called
present (p ≥ 0.5) and the rounded sum of the probabilities; then the most common count's share (the prior).
"""
from __future__ import annotations

import json
import statistics as st
import sys
from collections import Counter

runs_file, manifest = sys.argv[1], sys.argv[2]
d = json.load(open(runs_file))
rows = [json.loads(line) for line in open(manifest) if line.strip()]
true = [rows[i]["n_classes"] for i in d["test_rows"]]
for arch, runs in d["runs"].items():
    called, summed = [], []
    for run in runs:
        probs = run["pred"]["classes"]
        called.append(sum(sum(q >= 0.5 for q in p) == n for p, n in zip(probs, true)) / len(true))
        summed.append(sum(round(sum(p)) == n for p, n in zip(probs, true)) / len(true))
    sd = (lambda xs: st.stdev(xs) if len(xs) > 1 else 0.0)
    print(f"{arch}: classes called present {st.mean(called):.3f} ± {sd(called):.3f}, "
          f"rounded sum {st.mean(summed):.3f} ± {sd(summed):.3f} ({len(runs)} seeds, {len(true)} test LoRAs)")
print(f"most common count: {max(Counter(true).values()) / len(true):.3f} of the test LoRAs")
