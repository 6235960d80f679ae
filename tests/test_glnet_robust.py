"""GL-net's ``scale`` (rms|median input scale) and ``squash`` (none|asinh) hyperparameters.

Invariance under per-layer GL(r) with every option, the robustness of the median scale to a few
huge adapters, the batched forward against the per-layer loop, and backward compatibility: a
config or checkpoint card written before these keys existed rebuilds the original model exactly.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from test_nets_models import F64, SPEC, adapter, gauge, make, run

from lolscan.nets import build_model, collate, model_from_config
from lolscan.nets.reference import glnet_loop_forward, per_layer_inputs

OPTIONS = [(s, q) for s in ("rms", "median") for q in ("none", "asinh")]
NEW_KEYS = ("scale", "squash")


@pytest.fixture()
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(4321)


def spread(ads, factors):
    """Multiply every ΔW of ads[i] by factors[i] (both factors by √factor)."""
    for a, f in zip(ads, factors):
        for x in a.layers.values():
            x.U.mul_(math.sqrt(f))
            x.V.mul_(math.sqrt(f))
    return ads


@pytest.mark.parametrize(("scale", "squash"), OPTIONS)
def test_gl_invariance_with_every_option(scale: str, squash: str, gen: torch.Generator) -> None:
    model = make("glnet", d=3, depth=2, hidden=16, scale=scale, squash=squash)
    ads = spread([adapter(gen=gen), adapter({"a": 2, "b": 4, "d": 1}, gen=gen), adapter(gen=gen)], (1.0, 50.0, 0.1))
    model.fit(ads)
    moved = [gauge(a, "gl", gen)[0] for a in ads]
    y, y2 = run(model, ads), run(model, moved)
    assert y.abs().max() > 1e-3
    torch.testing.assert_close(y2, y, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(("depth", "pool"), [(1, "concat"), (2, "mean")])
def test_squashed_forward_equals_the_loop_and_changes_the_output(depth: int, pool: str, gen: torch.Generator) -> None:
    model = make("glnet", d=3, depth=depth, pool=pool, hidden=16, squash="asinh")
    ads = spread([adapter(gen=gen), adapter({"a": 2, "c": 5, "e": 1}, gen=gen)], (1.0, 40.0))
    model.fit(ads)
    with torch.no_grad():
        batched = model(collate(ads, SPEC, dtype=F64))
        loop = glnet_loop_forward(model, per_layer_inputs(ads, SPEC, dtype=F64))
    torch.testing.assert_close(batched, loop, rtol=1e-10, atol=1e-12)
    plain = make("glnet", d=3, depth=depth, pool=pool, hidden=16)
    plain.load_state_dict(model.state_dict())
    assert (run(plain, ads) - batched).abs().max() > 1e-3  # the squash is really applied


def test_median_scale_is_the_median_per_adapter_rms(gen: torch.Generator) -> None:
    model = make("glnet", scale="median")
    ads = spread([adapter({"a": 2, "b": 3, "d": 1}, gen=gen) for _ in range(5)] + [adapter({"a": 3}, gen=gen) for _ in range(2)],
                 (1.0, 3.0, 0.2, 7.0, 0.5, 2.0, 9.0))
    model.fit(ads)
    for i, s in enumerate(SPEC):
        held = [a.layers[s.name].delta() for a in ads if s.name in a.layers]
        if not held:
            assert model.input_scale[i] == 1.0  # no adapter holds the layer
            continue
        rms = torch.stack([w.pow(2).mean().sqrt() for w in held])
        assert float(model.input_scale[i]) ** -2 == pytest.approx(float(rms.quantile(0.5)), rel=1e-6)


def test_median_scale_ignores_a_few_huge_adapters_where_rms_does_not(gen: torch.Generator) -> None:
    healthy = spread([adapter(gen=gen) for _ in range(20)],
                     [math.exp(x) for x in torch.empty(20).uniform_(-1.0, 1.0, generator=gen).tolist()])
    huge = spread([adapter(gen=gen) for _ in range(3)], (1000.0, 1000.0, 1000.0))
    for scale, check in (("median", lambda r: r.max() < 1.3), ("rms", lambda r: r.min() > 5.0)):
        before = make("glnet", scale=scale).fit(healthy).input_scale.clone()
        after = make("glnet", scale=scale).fit(healthy + huge).input_scale
        ratio = before / after  # > 1: the healthy adapters' inputs shrink
        assert check(ratio), (scale, ratio)


def test_median_scale_skips_zero_updates(gen: torch.Generator) -> None:
    """Adapters that hold a layer with an all-zero ΔW do not drag its median to zero."""
    ads = [adapter(gen=gen) for _ in range(2)]
    zeros = [adapter(gen=gen) for _ in range(3)]
    for a in zeros:
        for x in a.layers.values():
            x.U.zero_()
    model = make("glnet", scale="median").fit(ads + zeros)
    assert torch.isfinite(model.input_scale).all()
    expected = make("glnet", scale="median").fit(ads).input_scale
    torch.testing.assert_close(model.input_scale, expected, rtol=0, atol=0)


def test_bad_option_values_are_refused() -> None:
    with pytest.raises(ValueError, match="scale must be one of"):
        build_model("glnet", SPEC, 1, scale="mean")
    with pytest.raises(ValueError, match="squash must be one of"):
        build_model("glnet", SPEC, 1, squash="tanh")


def test_config_without_the_new_keys_rebuilds_the_original_model(gen: torch.Generator) -> None:
    """A config from before scale/squash existed (no such keys) gives the original behaviour."""
    ads = spread([adapter(gen=gen) for _ in range(4)], (1.0, 2.0, 100.0, 0.3))
    model = make("glnet", d=3, hidden=16, scale="rms", squash="none").fit(ads)
    old = model.config()
    old["hparams"] = {k: v for k, v in old["hparams"].items() if k not in NEW_KEYS}
    again = model_from_config(old).double()
    again.load_state_dict(model.state_dict())
    assert again.hparams == model.hparams
    torch.testing.assert_close(run(again, ads), run(model, ads), rtol=0, atol=0)
    refit = model_from_config(old).double().fit(ads)  # and fit() sets the same scales as before
    torch.testing.assert_close(refit.input_scale, model.input_scale, rtol=0, atol=0)
    for hp in ({"squash": "asinh"}, {"scale": "median"}):  # the keys matter, so the check above is not vacuous
        other = model_from_config({**old, "hparams": {**old["hparams"], **hp}}).double()
        other.load_state_dict(model.state_dict())
        other.fit(ads)
        assert (run(other, ads) - run(model, ads)).abs().max() > 1e-6, hp


def test_checkpoint_card_without_the_new_keys_predicts_identically(tmp_path) -> None:
    import lolscan
    from lolscan.checkpoint import CARD_NAME, load_checkpoint
    from lolscan.manifest import read_manifest
    from lolscan.training import TrainOptions, prepare, save_checkpoint, train, write_synthetic_zoo

    manifest = write_synthetic_zoo(tmp_path / "zoo", n=40, seed=3)
    ds = prepare(read_manifest(manifest), ["score"], progress=False)
    opts = TrainOptions(arch="glnet", hparams={"d": 4, "hidden": 16, "scale": "rms", "squash": "none"}, max_steps=20,
                        progress=False, threads=1)
    path = save_checkpoint(ds, train(ds, opts), tmp_path / "ck", name="ck")
    card_path = path / CARD_NAME
    card = json.loads(card_path.read_text())
    assert card["hparams"]["scale"] == "rms" and card["hparams"]["squash"] == "none"
    adapters = [lolscan.load(tmp_path / "zoo" / f"lora_{i:04d}") for i in range(8)]
    new = load_checkpoint(path).model.predict(adapters)
    card["hparams"] = {k: v for k, v in card["hparams"].items() if k not in NEW_KEYS}
    card_path.write_text(json.dumps(card))
    old = load_checkpoint(path)
    assert old.model.hparams["scale"] == "rms" and old.model.hparams["squash"] == "none"
    torch.testing.assert_close(old.model.predict(adapters), new, rtol=0, atol=0)


def test_bundled_glnet_cards_load_the_scale_and_squash_they_record() -> None:
    """Every bundled GL-net card records scale and squash and loads them (the last card written before the keys,
    the v1 Qwen data-sources checkpoint, was replaced; a card without them is covered by
    `test_checkpoint_card_without_the_new_keys_predicts_identically`)."""
    from helpers import REPO

    from lolscan.checkpoint import load_checkpoint
    from lolscan.nets import base_net

    seen = 0
    for folder in sorted((REPO / "models").iterdir()):
        if not (folder / "card.json").exists():
            continue
        card = json.loads((folder / "card.json").read_text())
        if card["architecture"] != "glnet":
            continue
        model = base_net(load_checkpoint(folder).model)  # an ensemble's members share the card's hparams
        assert set(NEW_KEYS) <= set(card["hparams"]), folder.name
        assert (model.scale, model.squash) == (card["hparams"]["scale"], card["hparams"]["squash"])
        seen += 1
    assert seen >= 5
