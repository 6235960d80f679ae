"""GL-net's ``skip``: with ``products=False``, a linear map from the standardised spectral features to the output,
added to the head's, which training starts at the least-squares fit of the regression targets (`GLNet.fit_skip`).

Independent truth: the per-layer loop reference (``nets.reference``, dense SVD of ΔW), the standardised
singular values of the dense ΔW, invariance under random GL(r) gauges and zero padding, and the model
without the key (configs and cards written before it), which must rebuild and predict unchanged.
"""
from __future__ import annotations

import pytest
import torch
from test_nets_models import F64, SPEC, adapter, assert_gl_invariant_and_padding_free

from lolscan.nets import build_model, collate, model_from_config
from lolscan.nets.reference import glnet_loop_forward, per_layer_inputs


def fitted(products: bool, skip: bool, gen: torch.Generator, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("glnet", SPEC, 2, d=3, hidden=16, spectral=4, products=products, squash="asinh", scale="median",
                        skip=skip).double()
    ads = [adapter({"a": 2, "b": 4, "c": 1, "d": 3, "e": 2}, gen=gen), adapter(3, gen=gen), adapter(gen=gen)]
    model.fit(ads)
    return model, ads


def dense_features(model, ads) -> torch.Tensor:
    """The standardised σ₁..ₖ / ref per layer, from the dense ΔW (absent layers: zeros)."""
    k, feats = model.spectral, []
    for s, ref in zip(SPEC, model.spec_ref):
        sv = [torch.linalg.svdvals(a.layers[s.name].delta()) if s.name in a.layers else torch.zeros(0, dtype=F64) for a in ads]
        feats.append(torch.stack([torch.nn.functional.pad(x[:k], (0, k - min(k, x.numel()))) for x in sv]) / ref)
    return (torch.cat(feats, 1) - model.spec_mean) / model.spec_std


def randomise_skip(model, gen: torch.Generator) -> None:
    with torch.no_grad():
        model.spec_skip.copy_(torch.randn(model.spec_skip.shape, generator=gen, dtype=F64))


def test_skip_starts_at_zero_and_leaves_the_rest_of_the_initialisation_alone() -> None:
    """On one seed the model with the skip is the model without it, plus a zero map: same weights, same outputs."""
    plain, ads = fitted(False, False, torch.Generator().manual_seed(1))
    skip, _ = fitted(False, True, torch.Generator().manual_seed(1))
    assert skip.hparams["skip"] is True and "skip" not in plain.hparams  # off: not in the card, as before the key
    assert "spec_skip" not in plain.state_dict()
    assert skip.spec_skip.shape == (2, len(SPEC) * 4) and not skip.spec_skip.any()
    rest = {k: v for k, v in skip.state_dict().items() if k != "spec_skip"}
    assert rest.keys() == plain.state_dict().keys()
    for k, v in plain.state_dict().items():
        assert torch.equal(rest[k], v), k
    with torch.no_grad():
        torch.testing.assert_close(skip(collate(ads, SPEC, dtype=F64)), plain(collate(ads, SPEC, dtype=F64)), rtol=0, atol=0)


def test_skip_adds_a_linear_map_of_the_standardised_singular_values() -> None:
    gen = torch.Generator().manual_seed(2)
    model, ads = fitted(False, True, gen)
    randomise_skip(model, gen)
    z = dense_features(model, ads)
    with torch.no_grad():
        got = model(collate(ads, SPEC, dtype=F64))
        want = model.head(z) + z @ model.spec_skip.T
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert (z @ model.spec_skip.T).abs().max() > 1e-2  # the check above is not vacuous


def test_skip_keeps_the_model_gl_invariant_and_padding_free() -> None:
    gen = torch.Generator().manual_seed(8)
    model, ads = fitted(False, True, gen)
    randomise_skip(model, gen)
    assert_gl_invariant_and_padding_free(model, ads, gen)


def test_a_config_without_the_key_rebuilds_the_model_without_the_skip() -> None:
    """Configs and checkpoint cards written before ``skip`` existed load the model they were trained as."""
    model, ads = fitted(False, False, torch.Generator().manual_seed(3))
    old = model.config()
    assert "skip" not in old["hparams"]  # off is not written: a card without the key is what older lolscan wrote and reads
    again = model_from_config(old).double()
    again.load_state_dict(model.state_dict())  # strict: no spec_skip expected
    assert again.hparams == model.hparams
    with torch.no_grad():
        torch.testing.assert_close(again(collate(ads, SPEC, dtype=F64)), model(collate(ads, SPEC, dtype=F64)), rtol=0, atol=0)
    with_skip = model_from_config({**old, "hparams": {**old["hparams"], "skip": True}}).double()
    with pytest.raises(RuntimeError, match="spec_skip"):
        with_skip.load_state_dict(model.state_dict())


def test_skip_is_for_the_spectral_only_head() -> None:
    """Without spectral features there is nothing to skip from, and the model with the equivariant products is
    left as it was: the key is recorded off, no weight is made, and the model is the one without the key."""
    model = build_model("glnet", SPEC, 2, d=3, hidden=16, spectral=0, skip=True)
    assert "skip" not in model.hparams and "spec_skip" not in model.state_dict()
    gen = torch.Generator().manual_seed(5)
    with_products, ads = fitted(True, True, gen, seed=3)
    plain, _ = fitted(True, False, torch.Generator().manual_seed(5), seed=3)
    assert with_products.hparams == plain.hparams and "skip" not in with_products.hparams
    assert with_products.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        with_products.prod_gate.fill_(0.7)
        plain.prod_gate.fill_(0.7)
        got = with_products(collate(ads, SPEC, dtype=F64))
        torch.testing.assert_close(got, plain(collate(ads, SPEC, dtype=F64)), rtol=0, atol=0)
    torch.testing.assert_close(got, glnet_loop_forward(with_products, per_layer_inputs(ads, SPEC, dtype=F64)),
                               rtol=1e-10, atol=1e-12)


def zoo(gen: torch.Generator, count: int = 40):
    """Adapters of mixed ranks (some layers absent), and the dense σ₁, σ₂ of every layer ([count, L, 2], 0 where absent)."""
    ads = []
    for i in range(count):
        ranks = {s.name: 1 + (i + j) % 4 for j, s in enumerate(SPEC) if (i + j) % 7}
        ads.append(adapter(ranks, gen=gen))
    sv = torch.zeros(count, len(SPEC), 2, dtype=F64)
    for i, a in enumerate(ads):
        for j, s in enumerate(SPEC):
            if s.name in a.layers:
                x = torch.linalg.svdvals(a.layers[s.name].delta())[:2]
                sv[i, j, : len(x)] = x
    return ads, sv


def test_fit_skip_adds_the_least_squares_fit_of_what_the_head_leaves() -> None:
    """After `fit_skip` (tiny ridge) the output is the head's output plus the least-squares projection of the
    label's residual onto the affine span of the dense singular values, whatever the skip held before."""
    gen = torch.Generator().manual_seed(11)
    ads, sv = zoo(gen)
    torch.manual_seed(0)
    model = build_model("glnet", SPEC, 2, d=3, hidden=16, spectral=4, products=False, scale="median", skip=True).double().fit(ads)
    randomise_skip(model, gen)  # fit_skip reads what the head leaves, whatever the skip held before
    coef = torch.randn(len(SPEC), 2, generator=gen, dtype=F64)
    y = torch.zeros(len(ads), 2, dtype=F64)
    y[:, 0] = 0.7 + (sv * coef).sum((1, 2))  # affine in the spectra
    y[:, 1] = torch.randn(len(ads), generator=gen, dtype=F64)  # a column left unlabelled: untouched
    mask = torch.zeros(len(ads), 2, dtype=torch.bool)
    mask[:, 0] = True
    batch = collate(ads, SPEC, dtype=F64)
    z = dense_features(model, ads)
    before_bias, before_skip = model.head[-1].bias.detach().clone(), model.spec_skip.detach().clone()
    with torch.no_grad():
        before = model(batch)
        head = before[:, 0] - z @ model.spec_skip[0]
    x = torch.cat([z, torch.ones(len(ads), 1, dtype=F64)], 1)
    want = head + x @ torch.linalg.lstsq(x, (y[:, 0] - head).unsqueeze(1), driver="gelsd").solution[:, 0]
    model.fit_skip(batch, y, mask, ridge=1e-12)
    with torch.no_grad():
        after = model(batch)
    torch.testing.assert_close(after[:, 0], want, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(after[:, 1], before[:, 1], rtol=0, atol=0)
    assert torch.equal(model.spec_skip[1], before_skip[1]) and model.head[-1].bias[1] == before_bias[1]
    fit = 1 - (after[:, 0] - y[:, 0]).pow(2).mean() / y[:, 0].var(correction=0)
    assert fit > 0.99 and 1 - (before[:, 0] - y[:, 0]).pow(2).mean() / y[:, 0].var(correction=0) < 0.5
    model.fit_skip(batch, y, mask)  # the default ridge: a little shrinkage
    with torch.no_grad():
        shrunk = model(batch)[:, 0]
    assert 0 < (shrunk - want).abs().max() < 1e-2 * y[:, 0].std()


def test_fit_skip_ignores_unlabelled_rows_and_needs_the_skip() -> None:
    gen = torch.Generator().manual_seed(12)
    ads, sv = zoo(gen)
    y = (sv[:, :, 0].sum(1) - sv[:, 2, 1]).unsqueeze(1).repeat(1, 2)
    mask = torch.ones(len(ads), 2, dtype=torch.bool)
    mask[::3, 0] = False
    y[::3, 0] = 1e6  # garbage where unlabelled
    keep = [i for i in range(len(ads)) if i % 3]
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(build_model("glnet", SPEC, 2, d=3, hidden=16, spectral=4, products=False, skip=True).double().fit(ads))
    models[0].fit_skip(collate(ads, SPEC, dtype=F64), y, mask)
    models[1].fit_skip(collate([ads[i] for i in keep], SPEC, dtype=F64), y[keep], mask[keep])
    torch.testing.assert_close(models[0].spec_skip[0], models[1].spec_skip[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(models[0].head[-1].bias[0], models[1].head[-1].bias[0], rtol=1e-9, atol=1e-12)
    plain = build_model("glnet", SPEC, 2, d=3, hidden=16, spectral=4, products=False).double().fit(ads)
    with pytest.raises(ValueError, match="skip"):
        plain.fit_skip(collate(ads, SPEC, dtype=F64), y, mask)


def test_training_fits_the_skip_for_regression_targets_only() -> None:
    """`lolscan.training.loop._fit_skip`: regression columns (standardised, as the loss reads them) get the fit;
    a class's logits keep a zero skip; a model without the skip is left alone."""
    from lolscan.targets import layout, make_target
    from lolscan.training.loop import _fit_skip

    gen = torch.Generator().manual_seed(13)
    ads, sv = zoo(gen)
    norm = sv[:, 0, 0] + 2 * sv[:, 3, 1]
    reg = make_target("norm", norm.tolist(), "regression")
    cls = make_target("big", ["yes" if x > norm.median() else "no" for x in norm.tolist()], "binary")
    layout([reg, cls])
    from lolscan.targets import fit_normalisation

    fit_normalisation(reg, norm.tolist())
    ys = {t.name: t.encode(v) for t, v in ((reg, norm.tolist()), (cls, ["yes" if x > norm.median() else "no" for x in norm.tolist()]))}
    torch.manual_seed(0)
    model = build_model("glnet", SPEC, 2, d=3, hidden=16, spectral=4, products=False, skip=True).double().fit(ads)
    batch = model.cache_features(collate(ads, SPEC, dtype=F64))
    _fit_skip(model, [reg, cls], batch, ys)
    with torch.no_grad():
        out = model(batch)
    r2 = 1 - (out[:, reg.offset] - ys["norm"][0][:, 0].double()).pow(2).mean() / ys["norm"][0].double().var(correction=0)
    assert r2 > 0.999
    assert model.spec_skip[reg.offset].abs().max() > 0.1 and not model.spec_skip[cls.offset].any()
    plain = build_model("glnet", SPEC, 2, d=3, hidden=16, spectral=4, products=False).double().fit(ads)
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    _fit_skip(plain, [reg, cls], model.cache_features(collate(ads, SPEC, dtype=F64)), ys)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in state.items())
