"""bench/architectures.py --from-json: runs of one zoo merge, runs of another zoo are refused."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "architectures.py"


def _module():
    return load_script("bench/architectures.py")


def _saved(arch: str, seeds: list[int], mean: float) -> dict:
    target = {"name": "y", "kind": "regression", "labels": [], "units": "", "mean": mean, "std": 0.5, "offset": 0, "width": 1}
    runs = [{"seed": s, "test": {"y": {"n": 10, "mse": 0.1 * (s + 1), "r2": 1 - 0.1 * (s + 1), "kendall_tau": 0.5}},
             "steps": 10, "best_step": 5, "seconds": 1.0 + s} for s in seeds]
    return {"splits": {"train": 70, "val": 15, "test": 10}, "targets": [target], "seeds": len(seeds),
            "device": "cpu", "runs": {arch: runs}, "skipped": {}}


def _write(tmp_path: Path, name: str, d: dict) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


def test_a_rebuild_whose_label_statistics_agree_to_1e9_merges(tmp_path):
    a = _write(tmp_path, "a.json", _saved("mlp", [0, 1], 2.585064710234))
    b = _write(tmp_path, "b.json", _saved("glnet", [0, 1, 2], 2.585064709001))  # two builds, labels to 1e-9
    merged = _module().merge_saved([a, b])
    assert sorted(merged["runs"]) == ["glnet", "mlp"]
    assert [r["seed"] for r in merged["runs"]["glnet"]] == [0, 1, 2]
    out = subprocess.run([sys.executable, str(SCRIPT), "--from-json", str(a), str(b), "--markdown"],
                         capture_output=True, text=True, check=True).stdout
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    assert "| 3 |" in rows["glnet"] and "| 2 |" in rows["mlp"]
    # mean ± std of R² over seeds 0..2: 0.8 ± 0.1
    assert "0.800 ± 0.100" in rows["glnet"]


@pytest.mark.parametrize("change", ["mean", "split", "name"])
def test_runs_on_another_zoo_are_refused_naming_the_file(tmp_path, change):
    a = _write(tmp_path, "a.json", _saved("mlp", [0], 2.585))
    other = _saved("glnet", [0], 2.585)
    if change == "mean":
        other["targets"][0]["mean"] = 2.585 * (1 + 1e-4)
    elif change == "split":
        other["splits"]["test"] = 11
    else:
        other["targets"][0]["name"] = "z"
    b = _write(tmp_path, "b.json", other)
    with pytest.raises(SystemExit, match="b.json: another split or other targets"):
        _module().merge_saved([a, b])


def test_the_same_seed_twice_is_refused(tmp_path):
    a = _write(tmp_path, "a.json", _saved("mlp", [0, 1], 2.585))
    b = _write(tmp_path, "b.json", _saved("mlp", [1, 2], 2.585))
    with pytest.raises(SystemExit, match=r"mlp seed\(s\) \[1\]"):
        _module().merge_saved([a, b])
