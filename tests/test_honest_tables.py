"""Honest tables (issue 17, item 2): the hyperparameter-only baseline, Kendall τ on the healthy subset,
paired bootstrap CIs against the best row, and each checkpoint card's margin over the baseline.

Truth is independent of the code under test: hand-counted τ, a resampled row compared with itself,
scikit-learn's RidgeCV for the numpy ridge, and synthetic zoos whose label is a known function of the
recipe only (``by_lr``) or of the weights only (``score``)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import REPO, write_recipe_zoo
from lolscan.evaluation import compare
from lolscan.evaluation.compare import healthy_rows, kendall_tau, paired_bootstrap, recipe_columns

# ---- statistics against hand counts ------------------------------------------------------------


def test_tau_on_the_healthy_subset_is_the_hand_count():
    lr = [1e-4, 2e-4, 3e-4, 5e-2, 4e-4]  # row 3 trained at a broken lr: left out
    pred = [1, 2, 3, 4, 5]
    true = [1, 3, 2, 9, 4]
    h = healthy_rows(lr, 1e-3)
    assert h == [0, 1, 2, 4]
    # pairs of (1,1) (2,3) (3,2) (5,4): five concordant, one discordant ((2,3) vs (3,2)) → (5 − 1) / 6
    assert kendall_tau([pred[i] for i in h], [true[i] for i in h]) == pytest.approx(2 / 3)
    # τ-b with a tie in x: pairs (0,1) tied, (0,2) and (1,2) concordant → 2 / √((3 − 1)(3 − 0))
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))


@pytest.mark.parametrize("kind,true_shape,pred_shape", [("regression", (30,), (30,)), ("binary", (30,), (30,)),
                                                         ("multiclass", (30,), (30, 3)), ("multilabel", (30, 4), (30, 4))])
def test_a_row_against_itself_has_the_ci_0_0(kind, true_shape, pred_shape):
    rng = np.random.default_rng(0)
    true = rng.normal(size=true_shape) if kind == "regression" else rng.integers(0, 3 if kind == "multiclass" else 2, true_shape)
    seeds = [rng.random(pred_shape), rng.random(pred_shape)]  # one row, two seeds, pooled on both sides
    assert paired_bootstrap(kind, true, seeds, seeds, reps=200) == (0.0, 0.0, 0.0)


def test_the_ci_excludes_zero_for_a_clearly_better_row_and_matches_a_plain_loop():
    rng = np.random.default_rng(1)
    true = rng.normal(size=60)
    good, bad = true + 0.1 * rng.normal(size=60), true + 1.0 * rng.normal(size=60)
    d, lo, hi = paired_bootstrap("regression", true, [good], [bad], reps=500)
    assert 0 < lo <= d <= hi
    # the vectorised resampling equals a plain loop over the same draws
    boots = compare.bootstrap_indices(60, 500)

    def r2(p, idx):
        t, q = true[idx], p[idx]
        return 1 - ((q - t) ** 2).sum() / ((t - t.mean()) ** 2).sum()

    diffs = sorted(r2(good, b) - r2(bad, b) for b in boots)
    assert (lo, hi) == pytest.approx((diffs[int(0.025 * 500)], diffs[int(0.975 * 500) - 1]))


def test_numpy_ridge_is_sklearns_ridgecv():
    sk = pytest.importorskip("sklearn.linear_model")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 6))
    X[:, 3] = 1.0  # a constant column (every LoRA of one rank)
    y = X[:, 0] ** 2 + 0.3 * rng.normal(size=50)
    Xt = rng.normal(size=(20, 6))
    ref = make_pipeline(StandardScaler(), sk.RidgeCV(alphas=np.logspace(-3, 3, 13))).fit(X, y).predict(Xt)
    assert np.allclose(compare.ridge_loo(X, y, Xt), ref, atol=1e-10)


def test_recipe_columns_of_a_diffusion_zoo_read_its_classes_and_dataset_size_unless_they_are_the_label():
    """The class facts (cls_*, n_classes, dataset_size: with [data] images_per_class = m, dataset_size is
    m x n_classes) are features of other targets; a target among them reads none of them."""
    cols = ["id", "lr", "steps", "dataset_size", "cls_Bag", "cls_Coat", "clip_score", "n_classes"]
    assert recipe_columns(cols, "clip_score") == ["lr", "steps", "dataset_size", "cls_Bag", "cls_Coat"]
    assert recipe_columns(cols, "classes", "multilabel", ["Bag", "Coat"]) == ["lr", "steps"]
    assert recipe_columns(cols, "cls_Bag", "binary", ["0", "1"]) == ["lr", "steps"]
    assert recipe_columns(cols, "dataset_size") == ["lr", "steps"]
    assert recipe_columns(cols, "n_classes", "multiclass") == ["lr", "steps"]
    assert recipe_columns(cols + ["src_x"], "classes", "multilabel", ["Bag", "Coat"]) == ["lr", "steps", "src_x"]


def test_recipe_columns_read_the_style_except_for_targets_made_of_it():
    """An identity zoo's font (sty_* one-hot) is a recipe fact for its CLIP score, letters and dataset size,
    but gives away the font's attributes and the font itself."""
    cols = ["id", "lr", "dataset_size", "cls_A", "sty_Bold", "sty_Roman", "style", "attributes", "attr_bold", "clip_score"]
    assert recipe_columns(cols, "clip_score") == ["lr", "dataset_size", "cls_A", "sty_Bold", "sty_Roman"]
    assert recipe_columns(cols, "classes", "multilabel", ["A"]) == ["lr", "sty_Bold", "sty_Roman"]
    for t, kind, labels in (("attributes", "multilabel", ["bold"]), ("attr_bold", "binary", ["0", "1"]),
                            ("style", "multiclass", ["Bold", "Roman"])):
        assert recipe_columns(cols, t, kind, labels) == ["lr", "dataset_size", "cls_A"], t


def test_diffusion_rows_write_the_style_one_hot_only_where_the_recipe_draws_styles():
    from types import SimpleNamespace

    from lolscan.zoo.diffusion import spec_fields

    spec = SimpleNamespace(split="train", classes=["A"], style="Roman", dataset_size=4, template="{cls}", rank=2,
                           alpha=2.0, lr=1e-3, steps=5, batch_size=2, weight_decay=0.0)
    source = SimpleNamespace(classes=["A", "B"], styles=["Bold", "Roman"])
    row = spec_fields(spec, source, styles=True)
    assert (row["sty_Bold"], row["sty_Roman"], row["cls_A"], row["cls_B"]) == (0, 1, 1, 0)
    assert not any(k.startswith("sty_") for k in spec_fields(spec, source))


def test_recipe_columns_leave_out_the_sources_when_they_are_the_label():
    cols = ["id", "lr", "steps", "sources", "src_a", "src_b", "acc"]
    assert recipe_columns(cols, "acc") == ["lr", "steps", "src_a", "src_b"]
    assert recipe_columns(cols, "sources", "multilabel", ["a", "b"]) == ["lr", "steps"]  # the label is the src_ columns
    assert recipe_columns(cols, "src_a", "binary", ["0", "1"]) == ["lr", "steps"]
    assert recipe_columns(["path", "acc"], "acc") is None  # no recipe: no baseline


def test_without_sklearn_the_baseline_is_ridge_alone(monkeypatch):
    monkeypatch.setattr(compare, "gbt_available", lambda: False)
    X = np.arange(20.0)[:, None] / 10 - 4
    out = compare.fit_hp_baseline("regression", X, X[:, 0] ** 2, X, ["lr"])
    assert list(out) == ["ridge"]
    assert compare.metric("regression", X[:, 0] ** 2, out["ridge"]) > 0.999  # the cubic in log lr holds a square


# ---- a zoo whose label is the recipe, or the weights ---------------------------------------------


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from lolscan.manifest import read_manifest
    from lolscan.training import prepare

    manifest = write_recipe_zoo(tmp_path_factory.mktemp("recipe") / "zoo")
    return manifest, prepare(read_manifest(manifest), ["by_lr", "score"], progress=False)


@pytest.fixture(scope="module")
def trained(zoo, tmp_path_factory):
    from lolscan import baseline
    from lolscan.training import TrainOptions, save_checkpoint, train

    _, ds = zoo
    result = train(ds, TrainOptions(arch="mlp-svd", max_steps=100, progress=False, threads=1))
    hp = baseline.fit(ds, models=["ridge"])  # the trees take seconds; test_bench_architectures… fits them
    path = save_checkpoint(ds, result, tmp_path_factory.mktemp("ck") / "recipe-ck", name="recipe-ck", hp=hp)
    return result, path


def test_the_baseline_finds_a_recipe_label_and_nothing_in_a_weight_label(zoo):
    from lolscan import baseline

    _, ds = zoo
    hp = baseline.fit(ds, models=["ridge"])
    by_lr, score = hp["by_lr"], hp["score"]
    assert by_lr["features"][0] == "lr" and "src_a" in by_lr["features"]
    assert compare.metric("regression", by_lr["true"], by_lr["models"]["ridge"]) > 0.95
    assert compare.metric("regression", score["true"], score["models"]["ridge"]) < 0.15


def test_the_card_records_the_margin_and_models_shows_it(trained):
    from lolscan.cli.app import _register, app

    _, path = trained
    card = json.loads((path / "card.json").read_text())
    m = card["hp_baseline"]["by_lr"]
    assert m["metric"] == "r2" and m["model"] == "ridge" and m["baseline"] > 0.95
    # the weights say nothing of lr: the checkpoint cannot beat the recipe, and the CI says so
    assert m["margin"] == pytest.approx(m["checkpoint"] - m["baseline"])
    assert m["ci95"][0] <= m["margin"] <= m["ci95"][1] < 0
    assert card["hp_baseline"]["score"]["baseline"] < 0.15
    _register()
    r = CliRunner().invoke(app, ["models", str(path)], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if "recipe-only by_lr" in x)
    assert f"margin {m['margin']:.4g}" in line and m["model"] in line
    t = next(t for t in card["targets"] if t["name"] == "by_lr")  # the range the predictions are kept in
    assert f"predictions within {t['low']:.4g}–{t['high']:.4g}" in next(x for x in r.output.splitlines() if "target by_lr" in x)


def test_a_manifest_without_a_recipe_says_so_on_the_card(tmp_path):
    from lolscan import baseline
    from lolscan.manifest import read_manifest
    from lolscan.training import prepare, write_synthetic_zoo

    ds = prepare(read_manifest(write_synthetic_zoo(tmp_path, n=40)), ["score"], progress=False)
    entry = baseline.margins(ds.targets, baseline.fit(ds), {"score": np.zeros((len(ds.splits["test"]), 1))})
    assert entry == {"score": {"none": baseline.NO_RECIPE}}


def test_the_train_table_shows_the_baseline_columns_and_cis(zoo, trained):
    from lolscan import baseline
    from lolscan.training_run import compare_results

    _, ds = zoo
    result, _ = trained
    results = {"mlp-svd": {"metrics": result.metrics, "steps": 1, "best_step": 1, "seconds": 0.0,
                           "test_scores": {t: s.tolist() for t, s in result.test_scores.items()}}}
    comparison = compare_results(ds, results, baseline.fit(ds, models=["ridge"]), reps=300)
    rows = comparison["targets"]["by_lr"]["rows"]
    assert comparison["targets"]["by_lr"]["best"] == "hp-ridge" and rows["mlp-svd"]["ci95"][1] < 0
    assert comparison["targets"]["score"]["best"] == "mlp-svd" and rows["hp-ridge"]["tau_healthy"] is not None
    assert comparison["healthy_lr"] == pytest.approx(float(np.median([float(r.labels["lr"]) for r in ds.manifest.rows])))
    from rich.console import Console

    from lolscan.cli.train_cmd import metrics_table

    console = Console(width=250, record=True)
    console.print(metrics_table(results, ds.targets, "t", comparison))
    text = console.export_text()
    assert "hp-ridge" in text and "R² − best [95 % CI]" in text and "τ, lr ≤" in text


def test_bench_architectures_prints_the_honest_table(zoo, tmp_path):
    manifest, _ = zoo
    out = subprocess.run([sys.executable, str(REPO / "bench" / "architectures.py"), str(manifest), "-t", "by_lr",
                          "--arch", "mlp-svd", "--seeds", "2", "--steps", "60", "--threads", "1", "--device", "cpu",
                          "--markdown", "--bootstrap", "300", "--json", str(tmp_path / "a.json")],
                         capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    honest = out.stdout.split("every row against the best row")[1]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in honest.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["hp-ridge"].endswith("best row |") or rows["hp-gbt"].endswith("best row |")
    assert float(rows["mlp-svd"].rsplit(",", 1)[1].strip(" ]|")) < 0  # the metanetwork does not beat the recipe
    # --from-json prints the same honest table from the saved runs
    again = subprocess.run([sys.executable, str(REPO / "bench" / "architectures.py"), "--from-json", str(tmp_path / "a.json"),
                            "--markdown", "--bootstrap", "300"], capture_output=True, text=True, timeout=120,
                           env={"PYTHONPATH": str(REPO), "PATH": "", "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr
    assert again.stdout.split("every row against the best row")[1] == honest
