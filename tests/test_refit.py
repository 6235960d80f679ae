"""`lolscan train --refit`: once validation has chosen a model (settings, lr, each model's step), every model is
trained again from its seed on the training and validation rows for as many epochs (`lolscan.training.refit`).

Independent truth: `train_fixed` told the steps `_train` stopped at, on the same rows, retraces `_train`'s run
exactly (its own loop: same initialisation, minibatches and lr cuts); a run without --refit at the same seed
gives the calibration and validation outputs a refit must keep; the refitted models' loss on the validation rows,
which they trained on, is below the models' before it."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from helpers import write_noise_zoo
from typer.testing import CliRunner

from lolscan.checkpoint import CARD_NAME, load_checkpoint
from lolscan.cli.app import _register, app
from lolscan.manifest import read_manifest
from lolscan.nets import EnsembleNet
from lolscan.training import TrainOptions, prepare, save_checkpoint, train
from lolscan.training.loop import _loss, _outputs_for, _train
from lolscan.training.refit import train_fixed

_register()

OPTS = {"arch": "glnet", "hparams": {"d": 4, "hidden": 16, "products": True, "squash": "asinh"}, "lr": 3e-3, "max_steps": 200,
        "min_steps": 20, "eval_every": 10, "patience": 8, "decay_after": 2, "progress": False, "threads": 1}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """``score`` (learnable) and ``noise`` (overfits at once): the two targets stop at different steps, so a
    refitted model serves each from its own scaled step. 120 rows: 100 or more validation rows would split off
    calibration rows (`CALIBRATION_MIN`), which the larger fixture below covers."""
    return prepare(read_manifest(write_noise_zoo(tmp_path_factory.mktemp("zoo"), n=120, seed=4)), ["score", "noise"],
                   progress=False)


@pytest.fixture(scope="module")
def runs(ds):
    return train(ds, TrainOptions(**OPTS)), train(ds, TrainOptions(**OPTS, refit=True))


def test_train_fixed_retraces_the_run_it_replays(ds):
    # a high lr cut by 0.7 at every evaluation without progress: cuts before the targets' best steps
    opts = TrainOptions(**dict(OPTS, lr=1e-2, max_steps=400, min_steps=0, eval_every=5, patience=30, decay_after=1, lr_decay=0.7))
    run = _train(ds, opts)
    assert run.lr_cuts and min(run.lr_cuts) < max(run.best_steps.values())  # a cut the replay has to make
    assert len(set(run.best_steps.values())) == 2
    fixed = train_fixed(ds, opts, dict(run.best_steps), run.lr_cuts)
    for s in ("train", "val", "test"):
        assert torch.allclose(_outputs_for(fixed, ds, ds.splits[s]), run.outputs[s], rtol=1e-5, atol=1e-6), s
    no_cuts = train_fixed(ds, opts, dict(run.best_steps), [])
    assert not torch.allclose(_outputs_for(no_cuts, ds, ds.splits["test"]), run.outputs["test"], rtol=1e-3)


def test_refit_trains_on_the_validation_rows_for_as_many_epochs(ds, runs):
    plain, refit = runs
    n_train, n_val = len(ds.splits["train"]), len(ds.splits["val"])
    ratio = (n_train + n_val) / n_train
    assert refit.refit["rows"] == n_train + n_val and refit.refit["ratio"] == pytest.approx(ratio)
    assert refit.refit["steps"] == [{k: max(1, round(v * ratio)) for k, v in plain.best_steps.items()}]
    # the choice is the run without --refit: same settings, lr, steps; its validation outputs are kept
    assert refit.best_steps == plain.best_steps and refit.lr == plain.lr
    assert torch.equal(refit.outputs["val"], plain.outputs["val"])
    assert refit.metrics["val"] == plain.metrics["val"]
    # the refitted model learned the validation rows: its loss on them is below the model's before it
    val = ds.splits["val"]
    ys = {t.name: t.encode([ds.values[t.name][i] for i in val]) for t in ds.targets}
    score = [t for t in ds.targets if t.name == "score"]
    before = float(_loss(score, plain.outputs["val"], ys))
    after = float(_loss(score, _outputs_for(refit.model, ds, val), ys))
    assert after < 0.8 * before
    assert not torch.allclose(refit.outputs["test"], plain.outputs["test"], rtol=1e-3)
    # the test metrics are the refitted model's, from its outputs
    with torch.no_grad():
        raw = refit.model(refit.model.collate(ds.split_adapters("test")))
    assert torch.allclose(raw, refit.outputs["test"], rtol=1e-4, atol=1e-5)


def test_calibration_is_the_models_before_the_refit(tmp_path):
    """With ≥ 100 validation rows every second one calibrates only: a refit keeps the temperature or
    interval the models before it get on those rows (they never saw them)."""
    big = prepare(read_manifest(write_noise_zoo(tmp_path, n=700, seed=5)), ["score"], progress=False)
    assert len(big.splits["val"]) >= 100
    opts = dict(OPTS, max_steps=60, min_steps=0)
    plain = train(big, TrainOptions(**opts))
    interval = big.targets[0].interval
    refit = train(big, TrainOptions(**opts, refit=True))
    assert big.targets[0].interval == pytest.approx(interval, rel=1e-9) and refit.calibration_rows == plain.calibration_rows
    assert torch.equal(refit.outputs["calibration"], plain.outputs["calibration"])
    assert refit.refit["rows"] == len(big.splits["train"]) + len(big.splits["val"])


def test_an_ensemble_refits_every_member_and_the_card_says_so(ds, tmp_path):
    ens = train(ds, TrainOptions(**OPTS, ensemble=2, refit=True, weights_dtype="float16"))
    assert isinstance(ens.model, EnsembleNet) and len(ens.model.members) == 2
    ratio = ens.refit["ratio"]
    assert ens.refit["steps"] == [{k: max(1, round(v * ratio)) for k, v in b.items()} for b in ens.ensemble["best_steps"]]
    for p in ens.model.parameters():  # rounded as --weights-dtype says, after the refit
        assert torch.equal(p, p.half().float())
    path = save_checkpoint(ds, ens, tmp_path / "ck", name="ck")
    card = json.loads((path / CARD_NAME).read_text())
    assert card["training"]["refit"]["rows"] == len(ds.splits["train"]) + len(ds.splits["val"])
    got = load_checkpoint(path).scores(ds.split_adapters("test"))
    for t in ds.targets:
        assert torch.allclose(got[t.name], ens.test_scores[t.name], rtol=1e-3, atol=1e-4), t.name


def test_refit_needs_validation_rows(ds):
    no_val = replace(ds, splits={"train": ds.splits["train"] + ds.splits["val"], "val": [], "test": ds.splits["test"]})
    with pytest.raises(Exception, match="--refit .*validation rows"):
        train(no_val, TrainOptions(**OPTS, refit=True))


def test_cli_refit(tmp_path):
    manifest = write_noise_zoo(tmp_path / "zoo", n=80, seed=6)
    out = tmp_path / "ck"
    r = CliRunner().invoke(app, ["train", str(manifest), "-t", "score", "--out", str(out), "--refit", "--lr", "1e-3",
                                 "--steps", "60", "--eval-every", "10", "--threads", "1", "--no-progress", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    card = json.loads((out / CARD_NAME).read_text())
    rows = card["training_data"]["splits"]["train"] + card["training_data"]["splits"]["val"]
    assert card["training"]["refit"]["rows"] == rows
    shown = CliRunner().invoke(app, ["models", str(out)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and f"trained again on {rows} LoRAs (training + validation)" in shown.output
    r = CliRunner().invoke(app, ["train", str(manifest), "-t", "score", "--out", str(tmp_path / "ck2"), "--refit",
                                 "--val-fraction", "0", "--steps", "20", "--no-progress", "--device", "cpu"])
    assert r.exit_code == 2 and "--refit" in r.output and "validation rows" in r.output
    assert not (tmp_path / "ck2").exists()
