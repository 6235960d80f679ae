"""bench/architectures.py --test-where COLUMN=V: the honest table on a subset of the test adapters (the
rank-generalisation tables: train on ranks 2 and 4, test on 8), checked against the metric recomputed by
hand from the saved per-seed predictions, and the same from --from-json with the manifest."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, load_script, write_recipe_zoo

from lolscan.evaluation.compare import metric

ENV = {"PYTHONPATH": str(REPO), "PATH": "", "OMP_NUM_THREADS": "1"}
SCRIPT = str(REPO / "bench" / "architectures.py")


def _rows(out: str, title: str) -> dict[str, str]:
    part = out.split(title)[1].split("\n\n**")[0].split("hp-*:")[0]
    return {line.split(" | ")[0].lstrip("| "): line for line in part.splitlines() if line.startswith("| ") and "---" not in line}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    manifest = write_recipe_zoo(tmp_path_factory.mktemp("where") / "zoo", n=48)
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, r in enumerate(rows):  # the test rows are i % 4 == 0: half of them part a
        r["part"] = "a" if i % 8 == 0 else "b"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest, sum(r["part"] == "a" and r["split"] == "test" for r in rows)


def test_the_subset_table_is_the_metric_on_those_test_rows(zoo, tmp_path):
    manifest, n_a = zoo
    out = subprocess.run([sys.executable, SCRIPT, str(manifest), "-t", "by_lr", "--arch", "mlp-svd", "--seeds", "2",
                          "--steps", "30", "--threads", "1", "--device", "cpu", "--markdown", "--bootstrap", "200",
                          "--test-where", "part=a", "--json", str(tmp_path / "a.json")],
                         capture_output=True, text=True, timeout=300, env=ENV, check=False)
    assert out.returncode == 0, out.stderr
    title = f"by_lr: every row against the best row ({n_a} test adapters with part=a)"
    assert title in out.stdout and n_a == 6
    rows = _rows(out.stdout, title)
    saved = json.loads((tmp_path / "a.json").read_text())
    with open(manifest, newline="") as fh:
        labels = list(csv.DictReader(fh))
    keep = [k for k, i in enumerate(saved["test_rows"]) if labels[i]["part"] == "a"]
    info = saved["honest"]["targets"]["by_lr"]
    true = np.array([t for p, t in zip(info["positions"], info["true"]) if p in keep])
    r2 = [metric("regression", true, np.asarray(r["pred"]["by_lr"])[keep]) for r in saved["runs"]["mlp-svd"]]
    assert f"{np.mean(r2):.3f} ± {np.std(r2, ddof=1):.3f}" in rows["mlp-svd"]
    ridge = np.array([p for q, p in zip(info["positions"], saved["honest"]["hp"]["by_lr"]["models"]["ridge"]) if q in keep])
    assert f"{metric('regression', true, ridge):.3f} ± 0.000" in rows["hp-ridge"]
    # the same table from the saved runs (the manifest gives the column)
    again = subprocess.run([sys.executable, SCRIPT, str(manifest), "--from-json", str(tmp_path / "a.json"), "--markdown",
                            "--bootstrap", "200", "--test-where", "part=a"], capture_output=True, text=True, timeout=120, env=ENV,
                           check=False)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split(title)[1] == out.stdout.split(title)[1]


def test_bad_or_empty_conditions_are_refused():
    mod = load_script("bench/architectures.py")
    saved = {"test_rows": [3, 5], "honest": {"targets": {}, "hp": {}}}
    labels = [{"rank": r} for r in (2, 2, 2, 8, 2, 4)]
    assert mod.restrict_test(saved, labels, "rank=8.0")["where"] == "rank=8.0"  # numbers compare as numbers
    with pytest.raises(SystemExit, match="no test adapter matches"):
        mod.restrict_test(saved, labels, "rank=2")
    with pytest.raises(SystemExit, match="COLUMN=VALUE"):
        mod.restrict_test(saved, labels, "rank")
    with pytest.raises(SystemExit, match="rerun them"):
        mod.restrict_test({"honest": {}}, labels, "rank=8")


def test_a_gzipped_jsonl_manifest_gives_the_same_labels(tmp_path):
    import gzip

    mod = load_script("bench/architectures.py")
    recs = [{"path": f"a{i}/w.safetensors", "split": "test", "rank": r, "y": 0.5 * i} for i, r in enumerate((2, 8, 4))]
    text = "".join(json.dumps(r) + "\n" for r in recs)
    (tmp_path / "m.jsonl").write_text(text)
    (tmp_path / "m.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    plain = mod.manifest_labels(tmp_path / "m.jsonl")
    assert plain == mod.manifest_labels(tmp_path / "m.jsonl.gz") == [{"rank": 2, "y": 0.0}, {"rank": 8, "y": 0.5}, {"rank": 4, "y": 1.0}]


def test_refit_baselines_reads_columns_the_manifest_gained(zoo, tmp_path):
    """--from-json --refit-baselines: the hyperparameter-only rows fitted again on the manifest as it is now
    (a recipe column added after the runs, here one that is the label itself: hp-ridge then explains it)."""
    manifest, _ = zoo
    run = subprocess.run([sys.executable, SCRIPT, str(manifest), "-t", "by_lr", "--arch", "mlp-svd", "--seeds", "1",
                          "--steps", "20", "--threads", "1", "--device", "cpu", "--markdown", "--bootstrap", "100",
                          "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300, env=ENV, check=False)
    assert run.returncode == 0, run.stderr
    with open(manifest, newline="") as fh:
        recs = list(csv.DictReader(fh))
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps({**r, "src_leak": float(r["by_lr"])}) + "\n" for r in recs))
    title = "by_lr: every row against the best row"

    def table(*extra):
        out = subprocess.run([sys.executable, SCRIPT, str(jsonl), "--from-json", str(tmp_path / "r.json"), "--markdown",
                              "--bootstrap", "100", *extra], capture_output=True, text=True, timeout=120, env=ENV, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout.split(title)[1]

    kept, refit = table(), table("--refit-baselines")
    assert "src_leak" not in kept and "src_leak" in refit
    ridge = next(line for line in refit.splitlines() if line.startswith("| hp-ridge"))
    r2 = float(ridge.split(" | ")[1].split(" ± ")[0])
    assert r2 > 0.99
