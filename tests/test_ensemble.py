"""`lolscan train --ensemble K`: K models trained at K seeds with the settings chosen at the first, their raw
outputs averaged (`lolscan.nets.EnsembleNet`), saved and loaded as one checkpoint.

Independent truth: each member run on its own, and `train` run separately at each seed with the same
(pinned) settings; GL invariance under a random gauge per module."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import write_noise_zoo
from test_nets_models import F64, SPEC, adapter, gauge
from typer.testing import CliRunner

from lolscan.checkpoint import CARD_NAME, CARD_SCHEMA_VERSION, CheckpointError, load_checkpoint, read_card
from lolscan.manifest import read_manifest
from lolscan.nets import EnsembleNet, PerTargetNet, build_model, collate
from lolscan.training import (
    TrainOptions,
    prepare,
    save_checkpoint,
    train,
    write_synthetic_zoo,
)

# settings and lr pinned: no search runs, so each member is exactly `train` at its seed
OPTS = {"arch": "glnet", "hparams": {"d": 4, "hidden": 16, "products": True, "squash": "asinh"}, "lr": 1e-3, "max_steps": 150,
        "min_steps": 0, "eval_every": 10, "patience": 100, "progress": False, "threads": 1}


def _glnet(seed: int, ads: list) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("glnet", SPEC, 2, d=3, hidden=16, spectral=4, products=True, squash="asinh").double()
    return model.fit(ads)  # each member fitted on its own adapters: buffers differ between members


def test_output_is_the_members_mean_and_gl_invariant() -> None:
    gen = torch.Generator().manual_seed(3)
    ads = [adapter({"a": 2, "b": 4, "c": 1, "d": 3, "e": 2}, gen=gen), adapter(3, gen=gen), adapter(gen=gen), adapter(2, gen=gen)]
    a, b, c = _glnet(0, ads[:2]), _glnet(1, ads[1:3]), _glnet(2, ads[2:])
    assert not torch.equal(a.spec_ref, b.spec_ref)
    # a member may itself serve its targets from several states (per-target early stopping): copies of one
    # fitted model whose learned weights differ
    later = copy.deepcopy(c)
    with torch.no_grad():
        for p in later.head.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=F64))
    per = PerTargetNet([c, later], [1, 0])
    ens = EnsembleNet([a, b, per]).eval()
    with torch.no_grad():
        got = ens(collate(ads, SPEC, dtype=F64))
        want = torch.stack([m(collate(ads, SPEC, dtype=F64)) for m in (a, b, per)]).mean(0)
        # features another model cached in the batch are not a member's: each reads the factors itself
        cached = ens(a.cache_features(collate(ads, SPEC, dtype=F64)))
        moved = ens(collate([gauge(x, "gl", gen)[0] for x in ads], SPEC, dtype=F64))
        changed = ens(collate([gauge(x, "gl", gen)[0] for x in ads[1:]] + [adapter(gen=gen)], SPEC, dtype=F64))
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(got, a(collate(ads, SPEC, dtype=F64)), rtol=1e-3)
    assert torch.allclose(cached, want, rtol=1e-12, atol=1e-14)
    assert torch.allclose(got, moved, rtol=1e-9, atol=1e-11)
    assert not torch.allclose(got, changed, rtol=1e-3)
    assert ens.arch == "glnet" and ens.hparams == a.hparams
    other = build_model("glnet", SPEC, 2, d=5, hidden=16, spectral=4, products=True, squash="asinh").double()
    with pytest.raises(ValueError, match="share one architecture"):
        EnsembleNet([a, other])


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """The synthetic zoo with a ``noise`` label (overfits at once): members serve it from an early step,
    so they are `PerTargetNet`s and the card carries each member's states."""
    return prepare(read_manifest(write_noise_zoo(tmp_path_factory.mktemp("zoo"), n=60, seed=2)), ["score", "noise"],
                   progress=False)


@pytest.fixture(scope="module")
def runs(ds):
    ens = train(ds, TrainOptions(**OPTS, ensemble=3))
    singles = [train(ds, TrainOptions(**OPTS, seed=k)) for k in range(3)]
    return ens, singles


def test_train_averages_models_trained_at_the_next_seeds(ds, runs):
    ens, singles = runs
    assert isinstance(ens.model, EnsembleNet) and len(ens.model.members) == 3
    for s in ("train", "val", "test"):
        mean = torch.stack([r.outputs[s] for r in singles]).mean(0)
        assert torch.allclose(ens.outputs[s], mean, rtol=1e-6, atol=1e-7), s
    assert not torch.allclose(ens.outputs["test"], singles[0].outputs["test"], rtol=1e-3)
    assert ens.ensemble == {"members": 3, "seeds": [0, 1, 2], "best_steps": [r.best_steps for r in singles],
                            "steps": [r.steps for r in singles], "lr_cuts": [r.lr_cuts for r in singles]}
    # the monitored loss is the ensemble's, metrics are recomputed from its outputs
    y = ens.ys["val"]
    assert ens.best_loss == pytest.approx(float(sum(t.loss(ens.outputs["val"], *y[t.name]) for t in ds.targets)), rel=1e-6)
    assert ens.best_step == singles[0].best_step and ens.options.seed == 0
    # served from raw factors, the model gives the averaged outputs
    with torch.no_grad():
        ens.model.eval()
        raw = ens.model(ens.model.collate(ds.split_adapters("test")))
    assert torch.allclose(raw, ens.outputs["test"], rtol=1e-4, atol=1e-5)
    again = train(ds, TrainOptions(**OPTS, ensemble=3))  # deterministic for a seed
    assert torch.equal(again.outputs["test"], ens.outputs["test"])
    with pytest.raises(Exception, match="ensemble"):
        train(ds, TrainOptions(**OPTS, ensemble=0))


def test_the_checkpoint_round_trips_and_refuses_a_card_that_does_not_match(ds, runs, tmp_path):
    ens, _ = runs
    path = save_checkpoint(ds, ens, tmp_path / "ck", name="ck")
    card = json.loads((path / CARD_NAME).read_text())
    assert card["schema_version"] == 3 and card["training"]["seed"] == 0
    assert card["training"]["ensemble"]["seeds"] == [0, 1, 2] and card["ensemble"]["members"] == 3
    for m, states, steps in zip(ens.model.members, card["ensemble"]["states"], card["training"]["ensemble"]["best_steps"]):
        if isinstance(m, PerTargetNet):
            order = sorted(set(steps.values()))
            assert states == {"count": len(order), "steps": order, "targets": {n: order.index(s) for n, s in steps.items()}}
        else:
            assert states is None
    assert any(isinstance(m, PerTargetNet) for m in ens.model.members)  # the case the states are for
    assert all(k.startswith("members.") for k in card["tensors"])
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt.model, EnsembleNet)
    got = ckpt.scores(ds.split_adapters("test"))
    for t in ds.targets:
        assert torch.allclose(got[t.name], ens.test_scores[t.name], rtol=1e-4, atol=1e-5), t.name

    def broken(edit) -> Path:
        bad = tmp_path / "bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(path, bad)
        c = json.loads(json.dumps(card))
        edit(c)
        (bad / CARD_NAME).write_text(json.dumps(c))
        return bad

    def more(c):  # one member more than the tensors hold
        c["ensemble"]["members"] += 1
        c["ensemble"]["states"].append(None)

    with pytest.raises(CheckpointError, match="members.3"):
        load_checkpoint(broken(more))
    with pytest.raises(CheckpointError, match="ensemble"):
        load_checkpoint(broken(lambda c: c["ensemble"].update(members=4)))  # states for three
    with pytest.raises(CheckpointError, match="schema_version 2"):
        load_checkpoint(broken(lambda c: c.update(schema_version=2)))  # an ensemble needs 3
    with pytest.raises(CheckpointError, match="newer than this lolscan.*written by lolscan"):
        read_card(broken(lambda c: c.update(schema_version=CARD_SCHEMA_VERSION + 1)))


def test_self_test_passes_on_an_ensemble(ds, runs, tmp_path):
    from lolscan.evaluation.selftest import run_self_test

    ens, _ = runs
    checks = run_self_test(load_checkpoint(save_checkpoint(ds, ens, tmp_path / "ck", name="ck")))
    assert [c.name for c in checks] == ["gauge", "padding", "sensitivity", "sensitivity"]
    assert all(c.passed for c in checks), checks


def test_cli_ensemble(tmp_path, monkeypatch):
    from lolscan.cli.app import _register, app

    _register()
    monkeypatch.setenv("LOLSCAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOLSCAN_MODELS_DIR", str(tmp_path / "bundled"))
    zoo = write_synthetic_zoo(tmp_path / "zoo", n=40, seed=1)
    tiny = ["--steps", "30", "--threads", "1", "--hparam", "d=4", "--hparam", "hidden=16", "--hparam", "products=true",
            "--hparam", "squash=asinh", "--lr", "1e-3", "--no-progress"]

    def run(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    r = run("train", zoo, "-t", "score", "--out", "x", "--ensemble", "0", *tiny)
    lines = [ln for ln in r.output.splitlines() if "--ensemble" in ln]
    assert r.exit_code == 2 and len(lines) == 1 and "expected a number of models ≥ 1" in lines[0], r.output
    r = run("train", zoo, "-t", "score", "--out", "ens", "--ensemble", "2", "--seed", "5", "--format", "json", *tiny)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"]["glnet"]["ensemble"]["seeds"] == [5, 6]
    r = run("models", "ens")
    assert r.exit_code == 0 and "2 models at seeds 5, 6" in r.stdout, r.stdout
    r = run("models", "--format", "json")
    assert json.loads(r.stdout)["models"][0]["ensemble"] == 2
    r = run("models", "ens", "--self-test")
    assert r.exit_code == 0, r.output
