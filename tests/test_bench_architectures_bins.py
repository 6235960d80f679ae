"""Dataset size scored as the paper scores it (Imagenette-LoRA, its Table 4: test accuracy over classes):
bench/architectures.py --bins COL=N turns a numeric target into N equal-width bins (a multiclass target),
--kind sets a target's kind, and the hyperparameter-only baseline of n_classes (the count of a diffusion
zoo's cls_* columns) must not read the cls_* columns, which add up to it, nor dataset_size (a multiple of it
where the recipe sets images_per_class), nor that of dataset_size either."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from types import SimpleNamespace

from helpers import REPO, load_script, write_recipe_zoo

from lolscan.evaluation.compare import recipe_columns

ENV = {"PYTHONPATH": str(REPO), "PATH": "", "OMP_NUM_THREADS": "1"}
SCRIPT = str(REPO / "bench" / "architectures.py")


def test_bins_are_equal_width_over_the_range_and_sort_in_order():
    arch = load_script("bench/architectures.py")
    rows = [SimpleNamespace(labels={"dataset_size": v}) for v in [4, 9, 10, 15, 16, 57, 58, 63, 64, None, 33.9]]
    edges = arch.bin_column(SimpleNamespace(rows=rows), "dataset_size", 10)
    assert edges == [4, 10, 16, 22, 28, 34, 40, 46, 52, 58, 64]
    got = [r.labels["dataset_size"] for r in rows]
    assert got[:9] == ["0:[4, 10)", "0:[4, 10)", "1:[10, 16)", "1:[10, 16)", "2:[16, 22)",
                       "8:[52, 58)", "9:[58, 64]", "9:[58, 64]", "9:[58, 64]"]
    assert got[9] is None and got[10] == "4:[28, 34)"
    many = [SimpleNamespace(labels={"x": float(v)}) for v in range(12)]
    arch.bin_column(SimpleNamespace(rows=many), "x", 12)
    labels = [r.labels["x"] for r in many]
    assert labels == sorted(labels) and labels[0].startswith("00:") and labels[-1].startswith("11:")


def test_a_class_count_is_not_predicted_from_the_classes():
    """Nor from the dataset size, nor the dataset size from either: a recipe with [data] images_per_class = m
    makes dataset_size = m x n_classes (m x the sum of the cls_* columns)."""
    cols = ["lr", "steps", "rank", "dataset_size", "n_classes", "cls_Bag", "cls_Coat", "src_a"]
    assert recipe_columns(cols, "n_classes", "multiclass") == ["lr", "steps", "rank", "src_a"]
    assert recipe_columns(cols, "dataset_size", "multiclass") == ["lr", "steps", "rank", "src_a"]
    assert recipe_columns(cols, "dataset_size") == ["lr", "steps", "rank", "src_a"]
    assert recipe_columns(cols, "clip_score") == ["lr", "steps", "rank", "dataset_size", "src_a", "cls_Bag", "cls_Coat"]


def test_a_binned_target_trains_as_classes(tmp_path):
    manifest = write_recipe_zoo(tmp_path / "zoo", n=32)
    out = subprocess.run([sys.executable, SCRIPT, str(manifest), "-t", "score", "--bins", "score=3", "-t", "steps",
                          "--kind", "steps=multiclass", "--arch", "mlp-svd", "--seeds", "1", "--steps", "10",
                          "--threads", "1", "--device", "cpu", "--markdown", "--bootstrap", "50",
                          "--json", str(tmp_path / "b.json")], capture_output=True, text=True, timeout=300, env=ENV, check=False)
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "b.json").read_text())
    targets = {t["name"]: t for t in saved["targets"]}
    assert targets["score"]["kind"] == "multiclass" and [x[:2] for x in targets["score"]["labels"]] == ["0:", "1:", "2:"]
    assert targets["steps"]["kind"] == "multiclass" and targets["steps"]["labels"] == ["10", "20"]
    assert "score accuracy" in out.stdout and "score: 3 bins" in out.stderr
    pred = saved["runs"]["mlp-svd"][0]["pred"]["score"]
    assert len(pred[0]) == 3  # class probabilities, as the honest table's paired bootstrap reads them


def test_a_count_target_gets_its_table_and_its_baselines_from_saved_runs(tmp_path):
    """--count: the count's accuracy per seed, the recipe rows guessing the number of labels, and the same
    honest rows again from the saved JSON and the manifest (--from-json MANIFEST --refit-baselines)."""
    manifest = write_recipe_zoo(tmp_path / "zoo", n=40)
    tagged = tmp_path / "zoo" / "manifest.jsonl"  # the JSONL a zoo writes, which --refit-baselines reads
    with open(manifest, newline="") as fh:
        recs = list(csv.DictReader(fh))
    num = ("lr", "steps", "batch_size", "dropout", "weight_decay", "rank", "alpha", "src_a")
    tagged.write_text("".join(json.dumps({**r, **{k: float(r[k]) for k in num}, "big": r["big"].split("|") if r["big"] else []}) + "\n"
                              for r in recs))
    args = [sys.executable, SCRIPT, str(tagged), "-t", "n", "--count", "n=big:5", "--arch", "mlp-svd", "--seeds", "2",
            "--steps", "10", "--threads", "1", "--device", "cpu", "--markdown", "--bootstrap", "50", "--json", str(tmp_path / "c.json")]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, env=ENV, check=False)
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "c.json").read_text())
    t = saved["targets"][0]
    assert (t["kind"], t["source"], t["per_label"]) == ("count", "big", 5.0) and len(t["labels"]) >= 2
    assert "n test accuracy" in out.stdout and "hp-ridge" in out.stdout
    again = subprocess.run([sys.executable, SCRIPT, str(tagged), "--from-json", str(tmp_path / "c.json"), "--refit-baselines",
                            "--markdown", "--bootstrap", "50"], capture_output=True, text=True, timeout=300, env=ENV, check=False)
    assert again.returncode == 0, again.stderr
    table = lambda text: [line for line in text.splitlines() if line.startswith("| hp-")]  # noqa: E731
    assert table(again.stdout) == table(out.stdout) and table(out.stdout)
