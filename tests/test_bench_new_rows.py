"""bench/new_rows.py: a checkpoint scored on the LoRAs an old manifest lacks, beside recipe baselines fitted on
the old rows. Independent truth: the checkpoint's own predictions on those adapters (`Checkpoint.predict` on
`lolscan.load`), R² and accuracy computed here, and baselines that see only the old rows."""
from __future__ import annotations

import csv
import json
import math
import random

from helpers import load_script, train_tiny_checkpoint

import lolscan

new_rows = load_script("bench/new_rows.py")


def _jsonl(rows: list[dict], path) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_scores_only_the_new_loras_against_baselines_fitted_on_the_old(tmp_path, monkeypatch, capsys):
    zoo, _, _, ckpt_path = train_tiny_checkpoint(tmp_path, seed=0, name="tiny", out=tmp_path / "ckpt")
    with open(zoo / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = random.Random(0)
    out = []
    for r in rows:
        out.append({"id": r["path"], "path": r["path"], "split": rng.choice(["train", "val", "test"]),
                    "score": float(r["score"]), "dominant": r["dominant"], "lr": 10 ** rng.uniform(-5, -2),
                    "steps": rng.choice([10, 20]), "batch_size": 2})
    old, fresh = out[:40], out[40:]
    _jsonl(old, tmp_path / "old.jsonl")
    _jsonl(out, zoo / "manifest.jsonl")
    monkeypatch.setattr("sys.argv", ["new_rows", str(tmp_path / "old.jsonl"), str(zoo / "manifest.jsonl"),
                                     "--model", str(ckpt_path), "--bootstrap", "200"])
    new_rows.main()
    text = capsys.readouterr().out

    from lolscan.checkpoint.loaded import load_checkpoint

    ck = load_checkpoint(ckpt_path)
    preds = ck.predict([lolscan.load(str(zoo / r["path"])) for r in fresh])
    y = [r["score"] for r in fresh]
    p = [q["score"]["value"] for q in preds]
    mean = sum(y) / len(y)
    r2 = 1 - sum((a - b) ** 2 for a, b in zip(y, p)) / sum((a - mean) ** 2 for a in y)
    acc = sum(q["dominant"]["value"] == r["dominant"] for q, r in zip(preds, fresh)) / len(fresh)

    assert f"score: {len(fresh)} new LoRAs" in text and f"baselines fitted on {len(old)} earlier rows" in text
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("  ")}
    by_target = text.split("dominant:")
    ck_score = next(ln for ln in by_target[0].splitlines() if ln.strip().startswith(str(ck.name)))
    ck_dom = next(ln for ln in by_target[1].splitlines() if ln.strip().startswith(str(ck.name)))
    assert math.isclose(float(ck_score.split(" r2 ")[1].split()[0]), r2, abs_tol=6e-4)
    assert math.isclose(float(ck_dom.split(" accuracy ")[1].split()[0]), acc, abs_tol=6e-4)
    assert "hp-ridge" in lines and "hp-trees" in lines
