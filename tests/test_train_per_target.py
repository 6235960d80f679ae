"""Per-target early stopping: with several targets, each target's outputs come from the weights at its own
lowest validation loss (`TrainOptions.per_target`, the default), saved and served as a `PerTargetNet`.

The case: ``score`` (linear in ΔW₀) keeps improving for hundreds of steps, ``noise`` (Gaussian, unrelated to
the weights) only overfits, so its validation loss is lowest at once. One summed validation loss stops both
early, at a step that is neither target's best."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import write_noise_zoo

from lolscan.checkpoint import CARD_NAME, CheckpointError, load_checkpoint
from lolscan.manifest import read_manifest
from lolscan.nets import PerTargetNet
from lolscan.training import TrainOptions, prepare, save_checkpoint, train

# products fixed: one architecture candidate, so a shorter run replays the same training
OPTS = dict(arch="glnet", hparams={"d": 8, "products": True, "squash": "none"}, max_steps=1000, progress=False, threads=1)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return prepare(read_manifest(write_noise_zoo(tmp_path_factory.mktemp("zoo"), n=200, seed=0)), ["score", "noise"],
                   progress=False)


@pytest.fixture(scope="module")
def runs(ds):
    return train(ds, TrainOptions(**OPTS)), train(ds, TrainOptions(**OPTS, per_target=False))


def test_each_target_gets_its_own_best_step(ds, runs):
    per, summed = runs
    for t in ds.targets:  # each target's step is the argmin of its own validation loss
        val = [h[f"val_loss:{t.name}"] for h in per.history]
        assert per.best_steps[t.name] == per.history[min(range(len(val)), key=val.__getitem__)]["step"]
    assert per.best_steps["noise"] < per.best_steps["score"]
    assert isinstance(per.model, PerTargetNet) and len(per.model.members) == 2
    assert per.best_loss == pytest.approx(sum(min(h[f"val_loss:{n}"] for h in per.history) for n in ("score", "noise")))
    # summed: one step, that of the lowest summed validation loss, for both
    val = [h["val_loss"] for h in summed.history]
    assert summed.best_steps == {"score": summed.best_step, "noise": summed.best_step}
    assert summed.best_step == summed.history[min(range(len(val)), key=val.__getitem__)]["step"]
    assert not isinstance(summed.model, PerTargetNet)


def test_per_target_stopping_is_no_worse_for_the_early_target_and_better_for_the_late_one(runs):
    per, summed = runs
    assert per.metrics["test"]["noise"]["mse"] <= summed.metrics["test"]["noise"]["mse"]
    assert per.metrics["test"]["score"]["mse"] < 0.5 * summed.metrics["test"]["score"]["mse"]
    assert per.steps > summed.steps  # training went on while score improved


def test_the_early_targets_outputs_are_the_model_at_its_step(ds, runs):
    """Served from what training held at that step: a run stopped there gives the same outputs."""
    per, _ = runs
    step = per.best_steps["noise"]
    short = train(ds, TrainOptions(**{**OPTS, "max_steps": step}, per_target=False))
    assert short.steps == step and short.best_step == step
    noise = ds.targets[1].out_slice
    assert torch.allclose(per.outputs["test"][:, noise], short.outputs["test"][:, noise], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(per.outputs["test"][:, ds.targets[0].out_slice], short.outputs["test"][:, ds.targets[0].out_slice])


def test_the_checkpoint_serves_each_target_from_its_state(ds, runs, tmp_path):
    per, _ = runs
    path = save_checkpoint(ds, per, tmp_path / "ck", name="ck")
    card = json.loads((path / CARD_NAME).read_text())
    assert card["schema_version"] == 2
    assert card["training"]["best_steps"] == per.best_steps and card["training"]["best_step"] == per.best_step
    steps = sorted(per.best_steps.values())
    assert card["states"] == {"count": 2, "steps": steps, "targets": {n: steps.index(s) for n, s in per.best_steps.items()}}
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt.model, PerTargetNet)
    got = ckpt.scores(ds.split_adapters("test"))  # from raw factors, not training's cached features
    for t in ds.targets:
        assert torch.allclose(got[t.name], per.test_scores[t.name], rtol=1e-4, atol=1e-5), t.name
    from lolscan.evaluation.selftest import run_self_test

    checks = run_self_test(ckpt)
    assert checks and all(c.passed is not False for c in checks), checks
    # a card whose states do not cover its targets is refused in one line
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    card["states"]["targets"].pop("noise")
    (broken / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="states"):
        load_checkpoint(broken)


def test_one_target_trains_as_before(ds):
    """A single target: nothing per target, one state, the same weights either way."""
    one = prepare(ds.manifest, ["score"], progress=False)
    a = train(one, TrainOptions(**{**OPTS, "max_steps": 200}))
    b = train(one, TrainOptions(**{**OPTS, "max_steps": 200}, per_target=False))
    assert not isinstance(a.model, PerTargetNet) and a.best_steps == {"score": a.best_step}
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_target_without_validation_labels_follows_the_others(ds):
    """Its validation loss is 0 throughout: it chooses no step of its own (step 25 would be an untrained model)."""
    import copy

    blind = copy.copy(ds)
    blind.values = {**ds.values, "noise": [None if i in set(ds.splits["val"]) else v for i, v in enumerate(ds.values["noise"])]}
    res = train(blind, TrainOptions(**{**OPTS, "max_steps": 300}))
    assert res.best_steps["noise"] == res.best_steps["score"] == res.best_step > 25
    assert not isinstance(res.model, PerTargetNet) and res.best_loss == pytest.approx(min(h["val_loss:score"] for h in res.history))
