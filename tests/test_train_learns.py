"""A trained model must actually read the weights: labels are known functions of ΔW.

The synthetic zoo (lolscan.training.write_synthetic_zoo) labels each adapter with
s₀ = u*ᵀ ΔW₀ v* for secret unit vectors u*, v* (regression), whether layer 1 carries a planted
direction (binary), which of three layers has the largest s (multiclass) and which layers have
s > 0.5 (multilabel). A shuffled-label control trained the same way must fail.
"""
from __future__ import annotations

import csv
import random

import pytest
import torch

from lolscan.manifest import read_manifest
from lolscan.training import TrainOptions, prepare, train, write_synthetic_zoo

OPTS = dict(arch="glnet", hparams={"d": 8}, max_steps=300, progress=False, threads=1)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return write_synthetic_zoo(root, n=200, seed=0)


@pytest.fixture(scope="module")
def learned(zoo):
    ds = prepare(read_manifest(zoo), ["score", "planted", "dominant", "big"], progress=False)
    return ds, train(ds, TrainOptions(**OPTS))


def test_labels_are_what_the_docstring_says(zoo):
    """Independent check of the zoo: score is a rank-1 linear functional of ΔW₀; norm is ‖ΔW₀‖_F."""
    import lolscan

    rows = list(csv.DictReader(open(zoo)))
    dws = [lolscan.load(str(zoo.parent / r["path"]))["model.layers.0.proj"].delta().double() for r in rows]
    for dw, row in zip(dws, rows):
        assert float(torch.linalg.matrix_norm(dw)) == pytest.approx(float(row["norm"]), rel=1e-5)
        assert ("L0" in row["big"].split("|")) == (float(row["score"]) > 0.5)
    X = torch.stack([dw.flatten() for dw in dws])  # 200 × 192
    y = torch.tensor([float(r["score"]) for r in rows], dtype=torch.float64)
    w = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]
    assert float((X @ w - y).abs().max()) < 1e-5  # exactly linear in ΔW₀
    s = torch.linalg.svdvals(w.reshape(16, 12))
    assert float(s[0]) == pytest.approx(1.0, rel=1e-4) and float(s[1]) < 1e-4  # u*ᵀ ΔW v*, unit u*, v*
    assert {r["planted"] for r in rows} == {"0", "1"}


def test_glnet_learns_every_kind_of_target(learned):
    ds, result = learned
    test = result.metrics["test"]
    assert len(ds.splits["test"]) >= 25
    assert test["score"]["r2"] > 0.8 and test["score"]["kendall_tau"] > 0.7
    assert test["planted"]["accuracy"] >= 0.9
    assert test["dominant"]["accuracy"] >= 0.7  # chance is ~1/3
    assert test["big"]["mean_accuracy"] >= 0.8  # chance is ~0.6 (predicting the majority per label)


def test_shuffled_labels_control_fails(zoo, tmp_path):
    rows = list(csv.DictReader(open(zoo)))
    scores = [r["score"] for r in rows]
    random.Random(5).shuffle(scores)
    shuffled = tmp_path / "shuffled.csv"
    with open(shuffled, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "score", "group"])
        w.writeheader()
        for r, s in zip(rows, scores):
            w.writerow({"path": str(zoo.parent / r["path"]), "score": s, "group": r["group"]})
    ds = prepare(read_manifest(shuffled), ["score"], progress=False)
    result = train(ds, TrainOptions(**OPTS))
    assert result.metrics["test"]["score"]["r2"] < 0.3


def test_training_is_deterministic_for_a_seed(learned):
    ds, result = learned
    again = train(ds, TrainOptions(**{**OPTS, "max_steps": 30}))
    twice = train(ds, TrainOptions(**{**OPTS, "max_steps": 30}))
    a, b = again.model.state_dict(), twice.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train(ds, TrainOptions(**{**OPTS, "max_steps": 30, "seed": 1}))
    assert not all(torch.equal(a[k], other.model.state_dict()[k]) for k in a)


def test_early_stopping_keeps_each_targets_best_validation_state(learned):
    """Four targets trained together: each one's outputs come from the step of its own lowest validation loss."""
    ds, result = learned
    for t in ds.targets:
        val = [h[f"val_loss:{t.name}"] for h in result.history]
        assert result.best_steps[t.name] == result.history[min(range(len(val)), key=val.__getitem__)]["step"], t.name
    assert result.best_step == max(result.best_steps.values())


@pytest.mark.parametrize("arch", ["mlp", "mlp-oalign", "mlp-svd", "mlp-dense"])
def test_baselines_train_the_same_on_features_extracted_once(zoo, arch, monkeypatch):
    """Training extracts a baseline's features once per split; the run must equal extracting them
    again for every minibatch (the old way), step for step."""
    from lolscan.nets import common

    ds = prepare(read_manifest(zoo), ["score", "planted"], progress=False)
    opts = TrainOptions(**{**OPTS, "arch": arch, "hparams": {}, "max_steps": 60, "eval_every": 10})
    calls = []
    orig_extract = common.FeatureMLP.extract

    def spy(self, batch, *a, **kw):
        out = orig_extract(self, batch, *a, **kw)
        calls.append(type(out).__name__)
        return out

    monkeypatch.setattr(common.FeatureMLP, "extract", spy)
    once = train(ds, opts)
    assert calls and set(calls) == {"FeatureBatch"}
    monkeypatch.setattr(common.FeatureMLP, "extract", lambda self, batch, *a, **kw: orig_extract(self, batch, max_elements=0))
    every = train(ds, opts)
    assert once.best_step == every.best_step and once.steps == every.steps
    for s in once.metrics:
        for t in once.metrics[s]:
            for k, v in once.metrics[s][t].items():
                if isinstance(v, float):
                    assert v == pytest.approx(every.metrics[s][t][k], rel=1e-4, abs=1e-6), (s, t, k)
