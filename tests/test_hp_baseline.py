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


def test_cross_validated_recipe_r2_finds_a_recipe_label_and_not_noise(tmp_path: Path) -> None:
    """--cv: a label made of the recipe (a step at lr 1e-3 and a slope in log lr) is found out of fold,
    on every LoRA and on each side of the cut; pure noise is not (R² near or under 0)."""
    rng = random.Random(1)
    rows = []
    for i in range(200):
        lr = 10 ** rng.uniform(-5, -2)
        rows.append({"id": f"lora-{i:04d}", "split": "train", "lr": lr, "steps": rng.choice([16, 32]),
                     "batch_size": 4, "dropout": 0.0, "weight_decay": 0.0, "rank": 4, "alpha": 8,
                     "acc": 0.6 - (0.3 if lr > 1e-3 else 0.0) + 0.05 * math.log10(lr), "noise": rng.gauss(0, 1)})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def r2s(target: str) -> dict[str, float]:
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "hp_baseline.py"), str(manifest), "-t", target,
                              "--cv", "5"], capture_output=True, text=True, check=True).stdout.splitlines()
        assert len(out) == 3  # all, healthy, damaging
        # the best of ridge (a cubic in log lr: smooth) and the trees (which find the step)
        return {line.split(":")[0]: max(float(x.split()[-1]) for x in line.split("R² ", 1)[1].split(", "))
                for line in out}

    acc = r2s("acc")
    assert all(v > 0.9 for v in acc.values()), acc
    noise = r2s("noise")
    assert all(v < 0.1 for v in noise.values()), noise


def test_one_test_lora_is_one_clear_error_not_a_traceback(tmp_path: Path) -> None:
    """A test split of one LoRA has no R² for any row: hp_baseline says so in one line and exits non-zero."""
    rows = [{"id": f"lora-{i:04d}", "split": "test" if i == 0 else "train", "lr": 10 ** (-5 + i / 10), "steps": 16,
             "batch_size": 4, "dropout": 0.0, "weight_decay": 0.0, "rank": 4, "alpha": 8, "acc": 0.5 + i / 100}
            for i in range(20)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "hp_baseline.py"), str(manifest), "-t", "acc"],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "no row has a finite test R² on 1 test LoRAs (acc)" in res.stderr
