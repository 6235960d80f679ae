"""`lr=None` (`lolscan train --lr auto`, its default): the learning rate is chosen by validation loss on a
small grid (`lolscan.training.LR_GRID`), walked from the default; a fixed lr searches nothing."""
from __future__ import annotations

import json
import math

import pytest

from lolscan.training import search
from lolscan.manifest import read_manifest
from lolscan.training import DEFAULT_LR, LR_GRID, TrainOptions, TrainResult, prepare, save_checkpoint, train, write_synthetic_zoo

# products fixed: one architecture candidate, so every run here is an lr candidate or the fixed lr
OPTS = dict(arch="glnet", hparams={"d": 4, "hidden": 16, "products": True, "squash": "none"}, max_steps=80, eval_every=10,
            progress=False, threads=1)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return prepare(read_manifest(write_synthetic_zoo(tmp_path_factory.mktemp("zoo"), n=80, seed=4)), ["score"], progress=False)


@pytest.fixture(scope="module")
def auto(ds):
    return train(ds, TrainOptions(**OPTS, lr=None))


def test_auto_keeps_the_lr_with_the_lowest_validation_loss(ds, auto, tmp_path):
    tried = auto.lr_search
    assert tried[0]["lr"] == DEFAULT_LR and len(tried) >= 2 and {e["lr"] for e in tried} <= set(LR_GRID)
    assert len({e["lr"] for e in tried}) == len(tried)
    best = min(tried, key=lambda e: e["val_loss"])
    assert auto.lr == best["lr"] and auto.chosen["lr"] == best["lr"] and auto.best_loss == best["val_loss"]
    # every candidate trained with its own lr: a different lr gives a different validation loss
    assert len({e["val_loss"] for e in tried}) == len(tried)
    card = json.loads((save_checkpoint(ds, auto, tmp_path / "ck", name="ck") / "card.json").read_text())
    assert card["training"]["lr"] == auto.lr and card["training"]["lr_search"] == tried
    assert [e["lr"] for e in card["training"]["search"]] == [e["lr"] for e in tried]


def test_auto_is_deterministic_for_a_seed(ds, auto):
    again = train(ds, TrainOptions(**OPTS, lr=None))
    assert again.lr_search == auto.lr_search and again.lr == auto.lr


def test_a_fixed_lr_searches_nothing(ds, tmp_path):
    fixed = train(ds, TrainOptions(**OPTS, lr=1e-3))
    assert fixed.lr == 1e-3 and fixed.lr_search == [] and "lr" not in fixed.chosen and fixed.tried == []
    card = json.loads((save_checkpoint(ds, fixed, tmp_path / "ck", name="ck") / "card.json").read_text())
    assert card["training"]["lr"] == 1e-3 and "lr_search" not in card["training"] and "search" not in card["training"]
    other = train(ds, TrainOptions(**OPTS, lr=3e-3))
    assert other.lr == 3e-3 and other.lr_search == [] and other.best_loss != fixed.best_loss


@pytest.mark.parametrize(
    "losses, walk, chosen",
    [
        ({3e-4: 1.0, 1e-3: 2.0, 3e-3: 3.0}, [1e-3, 3e-4], 3e-4),  # lower wins: higher never tried
        ({3e-4: 3.0, 1e-3: 2.0, 3e-3: 1.0}, [1e-3, 3e-4, 3e-3], 3e-3),
        ({3e-4: 3.0, 1e-3: 1.0, 3e-3: 2.0}, [1e-3, 3e-4, 3e-3], 1e-3),
        ({3e-4: 2.0, 1e-3: 2.0, 3e-3: 2.0}, [1e-3, 3e-4, 3e-3], 1e-3),  # ties keep the default
        ({3e-4: 3.0, 1e-3: math.nan, 3e-3: 1.0}, [1e-3, 3e-4], 3e-4),  # NaN loses to any number
    ],
)
def test_the_walk_goes_down_first_and_on_only_while_the_loss_falls(ds, monkeypatch, losses, walk, chosen):
    runs = []

    def fake(d, o):
        runs.append(o.lr)
        return TrainResult(None, {}, [], 0, 0, 0.0, {}, o, best_loss=losses[o.lr], lr=o.lr)

    monkeypatch.setattr(search, "_train", fake)  # where `train` looks it up
    res = train(ds, TrainOptions(**OPTS, lr=None, transform="none"))
    assert runs == walk and [e["lr"] for e in res.lr_search] == walk and res.lr == chosen
