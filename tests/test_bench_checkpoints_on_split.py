"""bench/checkpoints_on_split.py: two checkpoints side by side on a zoo's test split, with recipe baselines fitted
on the other rows. Independent truth: each checkpoint's own predictions (`Checkpoint.predict` on `lolscan.load`),
R² computed here, the paired difference of the two, and baselines that never see a test row."""
from __future__ import annotations

import csv
import json
import math
import random

from helpers import load_script, train_tiny_checkpoint

import lolscan

script = load_script("bench/checkpoints_on_split.py")


def test_two_checkpoints_and_the_recipe_on_the_test_split(tmp_path, capsys):
    from lolscan.checkpoint.loaded import load_checkpoint
    from lolscan.training import TrainOptions, save_checkpoint, train

    zoo, ds, _, first = train_tiny_checkpoint(tmp_path, seed=0, name="first", out=tmp_path / "first")
    second = save_checkpoint(ds, train(ds, TrainOptions(arch="mlp-svd", max_steps=40, progress=False, threads=1)),
                             tmp_path / "second", name="second")
    with open(zoo / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = random.Random(0)
    out = [{"id": r["path"], "path": r["path"], "split": rng.choice(["train", "train", "val", "test"]),
            "score": float(r["score"]), "dominant": r["dominant"], "lr": 10 ** rng.uniform(-5, -2), "steps": rng.choice([10, 20]),
            "batch_size": 2} for r in rows]
    (zoo / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
    got = script.main([str(zoo / "manifest.jsonl"), "-m", str(first), "-m", str(second), "--bootstrap", "200",
                       "--json", str(tmp_path / "out.json")])
    text = capsys.readouterr().out

    test = [r for r in out if r["split"] == "test"]
    y = [r["score"] for r in test]
    mean = sum(y) / len(y)

    def r2(path):
        p = [q["score"]["value"] for q in load_checkpoint(path).predict([lolscan.load(str(zoo / r["path"])) for r in test])]
        return 1 - sum((a - b) ** 2 for a, b in zip(y, p)) / sum((a - mean) ** 2 for a in y)

    table = got["targets"]["score"]["table"]
    assert got["targets"]["score"]["rows"] == len(test)
    assert got["targets"]["score"]["fitted_on"] == len(out) - len(test)
    assert math.isclose(table["first"]["mean"], r2(first), abs_tol=1e-4)
    assert math.isclose(table["second"]["mean"], r2(second), abs_tol=1e-4)
    assert {"first", "second", "hp-ridge"} <= set(table)
    best = got["targets"]["score"]["best"]
    other = "second" if best == "first" else "first"
    if best in ("first", "second"):
        assert math.isclose(table[other]["diff"], table[other]["mean"] - table[best]["mean"], abs_tol=1e-9)
        lo, hi = table[other]["ci95"]
        assert lo <= table[other]["diff"] <= hi
    assert "dominant: not predicted by every checkpoint" not in text  # both predict both targets
    assert json.loads((tmp_path / "out.json").read_text())["split"] == "test"
