"""bench/count_decode.py: the class count named from a classes run's stored test probabilities (--summary: every
architecture in short, what the former bench/class_count.py printed; without it: one architecture's decoders in depth)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REPO

SCRIPT = str(REPO / "bench" / "count_decode.py")


def run(*argv: object, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, SCRIPT, *map(str, argv)], capture_output=True, text=True, check=check, env=env)


def test_summary_counts_the_classes_called_present(tmp_path):
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
    out = run(tmp_path / "c.json", tmp_path / "m.jsonl", "--summary").stdout
    assert "glnet: classes called present 0.833 ± 0.236, rounded sum 0.667 ± 0.000 (2 seeds, 3 test LoRAs)" in out
    assert "most common count: 0.333" in out and "hp-" not in out and "(no --baseline:" in out
    out = run(tmp_path / "c.json", tmp_path / "m.jsonl", "--summary", "--baseline", tmp_path / "n1.json").stdout
    # counted 0.833 (seeds pooled) against 0.333: GL-net is ahead or level on every test LoRA, so on every resample
    line = next(x for x in out.splitlines() if "hp-ridge" in x)
    assert line.startswith("  classes called present − hp-ridge (0.333): +0.500 [+0.")
    assert "no --baseline" not in out


def test_summary_rounds_a_regression_runs_predictions(tmp_path):
    # the same three test LoRAs (1, 2, 3 classes); a regression on the count predicts 1.2, 2.6, 2.9 (seed 0:
    # rounded 1, 3, 3: two right) and 0.4, 1.6, 3.4 (seed 1: rounded 1 (clipped from 0), 2, 3: all right)
    rows = [{"id": f"l{i}", "n_classes": n} for i, n in enumerate([1, 9, 2, 3])]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c.json").write_text(json.dumps({"test_rows": [0, 2, 3], "runs": {}}))
    reg = {"test_rows": [0, 2, 3], "runs": {"glnet": [{"pred": {"n_classes": [[1.2], [2.6], [2.9]]}},
                                                      {"pred": {"n_classes": [[0.4], [1.6], [3.4]]}}]}}
    (tmp_path / "r.json").write_text(json.dumps(reg))
    argv = [tmp_path / "c.json", tmp_path / "m.jsonl", "--summary", "--regression", tmp_path / "r.json"]
    assert "glnet (regression on the count, rounded): 0.833 ± 0.236 (2 seeds)" in run(*argv).stdout
    (tmp_path / "r.json").write_text(json.dumps({**reg, "test_rows": [0, 1, 2]}))
    r = run(*argv, check=False)
    assert r.returncode != 0 and "the regression run has another test split" in r.stderr


def test_the_full_analysis_runs_without_a_baseline(tmp_path):
    # four test LoRAs with 1, 2, 3 and 4 of ten classes; present p 0.9, absent 0.02, except that seed 0 gives the
    # fourth LoRA's last class 0.2: called (and summed, 3.02) 3 there, so 3 of 4 right; seed 1 all right
    labels = [f"c{j}" for j in range(10)]
    present = [{0}, {0, 1}, {0, 1, 2}, {3, 4, 5, 6}]
    rows = [{"id": f"t{i}", "split": "test", "n_classes": len(s), **{f"cls_{c}": int(j in s) for j, c in enumerate(labels)}}
            for i, s in enumerate(present)]
    rows += [{"id": f"f{i}", "split": "train", "n_classes": n} for i, n in enumerate([2, 3, 5])]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s1 = [[0.9 if j in s else 0.02 for j in range(10)] for s in present]
    s0 = [row[:] for row in s1]
    s0[3][6] = 0.2
    runs = {"test_rows": [0, 1, 2, 3], "targets": [{"name": "classes", "labels": labels}],
            "runs": {"glnet": [{"seed": 0, "pred": {"classes": s0}}, {"seed": 1, "pred": {"classes": s1}}]}}
    (tmp_path / "c.json").write_text(json.dumps(runs))
    # a regression on the count: seed 0 rounds to 1, 2, 3, 4 (all right), seed 1 to 1 (clipped), 2, 4, 9 (half right)
    reg = {"test_rows": [0, 1, 2, 3], "runs": {"glnet": [{"pred": {"n_classes": [[1.4], [2.2], [2.6], [4.4]]}},
                                                         {"pred": {"n_classes": [[0.2], [2.5], [3.5], [9.0]]}}]}}
    (tmp_path / "r.json").write_text(json.dumps(reg))
    out = run(tmp_path / "c.json", tmp_path / "m.jsonl", "--regression", tmp_path / "r.json").stdout
    lines = out.splitlines()
    assert lines[0].startswith("glnet: 2 seeds, 4 test LoRAs;")
    assert "  (no --baseline: the counts are not set against an n_classes run's recipe-only rows; mc-head and poe are left out)" in lines
    assert any(x.startswith("  called      0.875 ± 0.177 [") for x in lines)
    assert any(x.startswith("  summed      0.875 ± 0.177 [") for x in lines)
    assert any(x.startswith("  reg-rounded 0.750 ± 0.354 [") for x in lines)
    assert "hp-" not in out and not any(x.startswith(("  mc-head", "  poe")) for x in lines)
    # the short table reads the same counts
    out = run(tmp_path / "c.json", tmp_path / "m.jsonl", "--summary", "--regression", tmp_path / "r.json").stdout
    assert "glnet: classes called present 0.875 ± 0.177, rounded sum 0.875 ± 0.177 (2 seeds, 4 test LoRAs)" in out
    assert "glnet (regression on the count, rounded): 0.750 ± 0.354 (2 seeds)" in out
