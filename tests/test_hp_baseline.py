"""bench/hp_baseline.py: the hyperparameter-only rows and the paired CI, on a manifest whose label is a
known function of the recipe (so trees on the recipe must win) and an architecture row that reads nothing."""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
ROOT = Path(__file__).resolve().parent.parent


def test_recipe_only_label_is_found_by_the_trees_and_beats_a_blind_row(tmp_path: Path) -> None:
    rng = random.Random(0)
    rows, test_ids = [], []
    for i in range(300):
        lr = 10 ** rng.uniform(-5, -2)
        split = "test" if i % 5 == 0 else ("val" if i % 5 == 1 else "train")
        label = 0.6 - (0.4 if lr > 1e-3 else 0.0) + 0.02 * math.log10(lr)  # a step and a slope in log lr
        rows.append({"id": f"lora-{i:04d}", "split": split, "acc": label, "lr": lr, "steps": 16, "batch_size": 2,
                     "dropout": 0.0, "weight_decay": 0.0, "rank": 4, "alpha": 8, "src_a": i % 2})
        if split == "test":
            test_ids.append(f"lora-{i:04d}")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mean = sum(r["acc"] for r in rows) / len(rows)
    blind = {"test_sources": test_ids, "runs": {"blind": [{"seed": s, "pred": {"acc": [mean + rng.gauss(0, 0.01) for _ in test_ids]}}
                                                         for s in range(2)]}}
    (tmp_path / "blind.json").write_text(json.dumps(blind))
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "hp_baseline.py"), str(manifest), "-t", "acc",
                          "--arch-json", str(tmp_path / "blind.json"), "--seeds", "2", "--bootstrap", "300"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    table = {line.split("  ")[0]: line for line in out[1:]}
    assert float(table["hp-trees"].split("  ")[1].split(" ")[0]) > 0.95 or float(table["hp-ridge"].split("  ")[1].split(" ")[0]) > 0.95
    blind_line = table["blind"]
    ci_hi = float(blind_line.rsplit(",", 1)[1].strip(" ]"))
    assert ci_hi < 0  # the blind row is worse than the best row with a CI excluding 0
