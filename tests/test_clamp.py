"""Regression predictions stay within the range of the training labels (`Target.low`/`high`, set by `train`
from the training split, kept in the card), unless `--no-clamp`: a metanetwork extrapolates past the LoRAs it
has seen, where trees, the recipe baselines, cannot."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from lolscan.targets import Target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import invariant_tasks as T  # noqa: E402


def test_scores_stay_in_the_recorded_range_and_old_cards_are_not_clamped():
    out = torch.tensor([[-5.0], [0.0], [5.0]])  # standardised: 0.0, 0.5 and 1.0 in units
    kept = Target("acc", "regression", mean=0.5, std=0.1, low=0.2, high=0.6)
    free = Target("acc", "regression", mean=0.5, std=0.1)
    assert kept.scores(out)[:, 0].tolist() == pytest.approx([0.2, 0.5, 0.6])
    assert free.scores(out)[:, 0].tolist() == pytest.approx([0.0, 0.5, 1.0])
    # a log target is kept in the range of its values, not of their logs
    log = Target("loss", "regression", mean=math.log(2.0), std=1.0, transform="log", low=1.5, high=8.0)
    assert log.scores(torch.tensor([[-3.0], [0.0], [3.0]]))[:, 0].tolist() == pytest.approx([1.5, 2.0, 8.0])
    # a card written before the fields existed has neither and reads back unclamped; one with them keeps them
    assert "low" not in free.to_json() and "high" not in free.to_json()
    assert Target.from_json(kept.to_json()) == kept and Target.from_json(free.to_json()) == free
    assert "predictions within 0.2–0.6" in kept.describe()


def _extrapolation_dataset(label=lambda norm: math.log(norm)):
    """The invariant suite's heavy zoo, labelled ``label``(Σᵢ ‖ΔWᵢ‖_F) (log by default) from the dense float64 updates: train and
    validation on the ordinary adapters, test on the 30–300× larger ones, whose labels lie past every training
    label."""
    from lolscan.nets import LayerSpec
    from lolscan.targets import layout, make_target
    from lolscan.training import Dataset

    ads, deltas, _ = T.make_zoo("heavy", 240, seed=3)
    values = [label(sum(float(torch.linalg.matrix_norm(d)) for d in dws.values())) for dws in deltas]
    big = [i for i in range(len(ads)) if i % 10 == 9]
    plain = [i for i in range(len(ads)) if i % 10 != 9]
    splits = {"train": plain[:170], "val": plain[170:], "test": big}
    target = make_target("norm", values, "regression")
    layout([target])
    return Dataset(None, ads, [target], {"norm": values}, splits, LayerSpec.from_adapters(ads), "synthetic", "column", 0), values


@pytest.mark.parametrize("clamp", [True, False])
def test_train_keeps_test_predictions_within_the_training_labels(clamp):
    from lolscan.training import TrainOptions, train

    ds, values = _extrapolation_dataset()
    train_labels = [values[i] for i in ds.splits["train"]]
    lo, hi = min(train_labels), max(train_labels)
    assert min(values[i] for i in ds.splits["test"]) > hi  # the test LoRAs are past the range
    opts = TrainOptions(arch="mlp-svd", hparams={"k": 4}, max_steps=300, progress=False, threads=1, transform="none", clamp=clamp)
    result = train(ds, opts)
    t = ds.targets[0]
    pred = result.test_scores["norm"][:, 0]
    if clamp:
        assert (t.low, t.high) == (lo, hi)
        assert float(pred.max()) <= hi + 1e-6 and float(pred.min()) >= lo - 1e-6
    else:
        assert t.low is None and t.high is None
        assert float(pred.max()) > hi  # the raw model does extrapolate here: the clamp above is what stopped it


def test_a_target_fitted_on_its_log_is_not_clamped():
    """A heavy tail's training maximum is no bound: fitted on its log, the label Σᵢ ‖ΔWᵢ‖_F itself is predicted
    past it for the 30–300× larger test LoRAs, and the card records no range."""
    from lolscan.training import TrainOptions, train

    ds, values = _extrapolation_dataset(label=lambda norm: norm)
    hi = max(values[i] for i in ds.splits["train"])
    result = train(ds, TrainOptions(arch="mlp-svd", hparams={"k": 4}, max_steps=300, progress=False, threads=1, transform="log"))
    t = ds.targets[0]
    assert t.transform == "log" and t.low is None and t.high is None and "low" not in t.to_json()
    assert float(result.test_scores["norm"][:, 0].max()) > hi


def test_bench_runs_saved_before_the_range_merge_with_runs_that_record_it():
    """bench/architectures.py --from-json merges runs of one split and one set of targets; the range is derived
    from the same training labels, so a run saved before it existed is still the same target."""
    from helpers import load_script

    arch = load_script("bench/architectures.py")
    new = Target("acc", "regression", mean=0.5, std=0.1, low=0.2, high=0.6).to_json()
    old = Target("acc", "regression", mean=0.5, std=0.1).to_json()
    other = Target("acc", "regression", mean=0.4, std=0.1, low=0.2, high=0.6).to_json()
    assert arch.same_targets([old], [new]) and arch.same_targets([new], [old])
    assert not arch.same_targets([old], [other])
