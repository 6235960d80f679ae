"""bench/class_count.py: the class count named from a classes run's stored test probabilities."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REPO


def test_class_count_counts_the_classes_called_present(tmp_path):
    # three test LoRAs (rows 0, 2, 3) with 1, 2 and 3 classes; seed 0 calls them 1, 2, 2 present, seed 1 all right
    rows = [{"id": f"l{i}", "n_classes": n} for i, n in enumerate([1, 9, 2, 3])]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s0 = [[0.9, 0.1, 0.1], [0.8, 0.7, 0.2], [0.9, 0.6, 0.4]]  # rounded sums 1, 2, 2
    s1 = [[0.9, 0.1, 0.1], [0.8, 0.7, 0.2], [0.9, 0.6, 0.5]]  # rounded sums 1, 2, 2 (2.0)
    runs = {"test_rows": [0, 2, 3], "runs": {"glnet": [{"pred": {"classes": s0}}, {"pred": {"classes": s1}}]}}
    (tmp_path / "c.json").write_text(json.dumps(runs))
    # the n_classes run's recipe-only row: always one class, right about the first test LoRA only
    hp = {"ridge": [[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.9, 0.1, 0.0]]}  # class index = count − 1
    base = {"test_rows": [0, 2, 3], "targets": [{"name": "n_classes", "labels": ["1", "2", "3"]}],
            "honest": {"hp": {"n_classes": {"models": hp}}}}
    (tmp_path / "n1.json").write_text(json.dumps(base))
    cmd = [sys.executable, str(REPO / "bench" / "class_count.py"), str(tmp_path / "c.json"), str(tmp_path / "m.jsonl")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    assert "glnet: classes called present 0.833 ± 0.236, rounded sum 0.667 ± 0.000 (2 seeds, 3 test LoRAs)" in out
    assert "most common count: 0.333" in out and "hp-" not in out
    out = subprocess.run(cmd + ["--baseline", str(tmp_path / "n1.json")], capture_output=True, text=True, check=True,
                         env=env).stdout
    # counted 0.833 (seeds pooled) against 0.333: GL-net is ahead or level on every test LoRA, so on every resample
    line = next(x for x in out.splitlines() if "hp-ridge" in x)
    assert line.startswith("  classes called present − hp-ridge (0.333): +0.500 [+0.")


def test_class_count_rounds_a_regression_runs_predictions(tmp_path):
    # the same three test LoRAs (1, 2, 3 classes); a regression on the count predicts 1.2, 2.6, 2.9 (seed 0:
    # rounded 1, 3, 3: two right) and 0.4, 1.6, 3.4 (seed 1: rounded 1 (clipped from 0), 2, 3: all right)
    rows = [{"id": f"l{i}", "n_classes": n} for i, n in enumerate([1, 9, 2, 3])]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c.json").write_text(json.dumps({"test_rows": [0, 2, 3], "runs": {}}))
    reg = {"test_rows": [0, 2, 3], "runs": {"glnet": [{"pred": {"n_classes": [[1.2], [2.6], [2.9]]}},
                                                      {"pred": {"n_classes": [[0.4], [1.6], [3.4]]}}]}}
    (tmp_path / "r.json").write_text(json.dumps(reg))
    cmd = [sys.executable, str(REPO / "bench" / "class_count.py"), str(tmp_path / "c.json"), str(tmp_path / "m.jsonl"),
           "--regression", str(tmp_path / "r.json")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert "glnet (regression on the count, rounded): 0.833 ± 0.236 (2 seeds)" in out
    (tmp_path / "r.json").write_text(json.dumps({**reg, "test_rows": [0, 1, 2]}))
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode != 0 and "another test split" in r.stderr
