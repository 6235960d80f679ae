"""GL-net's spectral head, the validation search and the synthetic invariant suite.

Independent truth: the dense-SVD loop reference (``nets.reference``), invariance under random
GL(r) gauges and zero padding, and labels that are known functions of ΔW computed from the dense
update in ``bench/invariant_tasks.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_nets_models import F64, SPEC, adapter, assert_gl_invariant_and_padding_free

from lolscan.nets import build_model, collate
from lolscan.nets.reference import glnet_loop_forward, per_layer_inputs
from lolscan.training import SEARCH_CONFIDENCE, SEARCH_MARGIN, TrainOptions, TrainResult, candidates, train
from lolscan.training.loop import _loss
from lolscan.training.search import _confidence, _keeps, _row_losses, _search_loss

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import invariant_tasks as T  # noqa: E402
import invariants as S  # noqa: E402


def fitted(products: bool, gen: torch.Generator, summaries: bool = False):
    torch.manual_seed(0)
    k = 2 if summaries else 4  # below the ranks, so the energy past the top k is not zero
    model = build_model("glnet", SPEC, 2, d=3, hidden=16, spectral=k, products=products, squash="asinh", scale="median",
                        summaries=summaries).double()
    ads = [adapter({"a": 2, "b": 4, "c": 1, "d": 3, "e": 2}, gen=gen), adapter(3, gen=gen), adapter(gen=gen)]
    model.fit(ads)
    return model, ads


def _dense_features(layer, k: int, summaries: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(magnitudes, shapes) of one layer from its dense ΔW with torch's matrix norms: the top k singular values
    and, with summaries, √(‖ΔW‖_F² − Σ top-k σ²) (0 at rank ≤ k, where the difference is rounding), then
    ‖ΔW‖_*/‖ΔW‖_F and ‖ΔW‖_F/‖ΔW‖₂ (zeros for no ΔW)."""
    if layer is None:
        return torch.zeros(k + summaries, dtype=F64), torch.zeros(2 * summaries, dtype=F64)
    dw = layer.delta()
    sv = torch.linalg.svdvals(dw)
    top = torch.nn.functional.pad(sv[:k], (0, k - min(k, sv.numel())))
    if not summaries:
        return top, torch.zeros(0, dtype=F64)
    fro, nuc, two = (torch.linalg.matrix_norm(dw, o) for o in ("fro", "nuc", 2))
    tail = (fro**2 - top.pow(2).sum()).clamp_min(0).sqrt() if layer.rank > k else torch.zeros((), dtype=F64)
    return torch.cat([top, tail.view(1)]), torch.stack([nuc / fro, fro / two])


@pytest.mark.parametrize("products,summaries", [(True, False), (False, False), (False, True)])
def test_spectral_head_matches_the_dense_svd_reference(products: bool, summaries: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    model, ads = fitted(products, gen, summaries)
    with torch.no_grad():
        got = model(collate(ads, SPEC, dtype=F64))
        if products:
            want = glnet_loop_forward(model, per_layer_inputs(ads, SPEC, dtype=F64))
        else:  # the head reads only the standardised features, from the dense ΔW
            rows = []
            for a in ads:
                row = []
                for s, ref in zip(SPEC, model.spec_ref):
                    mag, shape = _dense_features(a.layers.get(s.name), model.spectral, summaries)
                    row += [mag / ref, shape]
                rows.append(torch.cat(row))
            want = model.head((torch.stack(rows) - model.spec_mean) / model.spec_std)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("products,summaries", [(True, False), (False, False), (False, True)])
def test_spectral_glnet_is_gl_invariant_and_padding_free(products: bool, summaries: bool) -> None:
    gen = torch.Generator().manual_seed(8)
    model, ads = fitted(products, gen, summaries)
    assert_gl_invariant_and_padding_free(model, ads, gen)


def test_summaries_are_read_by_the_spectral_head_only() -> None:
    spectral = build_model("glnet", SPEC, 1, spectral=4, products=False, summaries=True)
    products = build_model("glnet", SPEC, 1, spectral=4, products=True, summaries=True)
    assert spectral.summaries and spectral.hparams["summaries"] is True
    assert spectral.spec_mean.numel() == len(SPEC) * (4 + 3)
    assert not products.summaries and "summaries" not in products.hparams  # the card says what the model reads
    assert products.spec_mean.numel() == len(SPEC) * 4


def test_search_candidates_respect_what_the_user_set() -> None:
    spectra, summaries = {"products": False, "summaries": False}, {"products": False, "summaries": True}
    skip = {"products": False, "summaries": True, "skip": True}
    raw, asinh = {"products": True, "squash": "none"}, {"products": True, "squash": "asinh"}
    assert candidates(TrainOptions()) == [spectra, summaries, skip, raw, asinh]
    assert candidates(TrainOptions(hparams={"products": True, "squash": "asinh"})) == [{}]
    assert candidates(TrainOptions(hparams={"squash": "none"})) == [spectra, summaries, skip, {"products": True}]
    # the skip set by the user: each spectral candidate once (with it, or without), not twice
    assert candidates(TrainOptions(hparams={"skip": True})) == [spectra, summaries, raw, asinh]
    assert candidates(TrainOptions(hparams={"skip": False})) == [spectra, summaries, raw, asinh]
    # the summaries set by the user: the spectral head with them, then with the skip
    assert candidates(TrainOptions(hparams={"summaries": True})) == [{"products": False}, {"products": False, "skip": True},
                                                                     raw, asinh]
    assert candidates(TrainOptions(hparams={"summaries": False})) == [{"products": False}, raw, asinh]
    assert candidates(TrainOptions(hparams={"spectral": 0})) == [raw, asinh]
    # no regression target: the skip (started at their least-squares fit) is not tried unless the user asks
    assert candidates(TrainOptions(), regression=False) == [spectra, summaries, raw, asinh]
    assert candidates(TrainOptions(hparams={"skip": True}), regression=False) == candidates(TrainOptions(hparams={"skip": True}))
    assert candidates(TrainOptions(arch="mlp-svd")) == [{}]
    assert 0 < SEARCH_MARGIN < 1


def test_search_margin_only_buys_complexity() -> None:
    spectral, raw, asinh = {"products": False}, {"products": True, "squash": "none"}, {"products": True, "squash": "asinh"}
    skip = {"products": False, "skip": True}
    a_bit_lower = 1 - SEARCH_MARGIN / 2  # lower, but by less than the margin
    assert _keeps(5.0, None, spectral, None)
    assert not _keeps(a_bit_lower, 1.0, skip, spectral)  # the skip over the spectral head alone: by the margin only
    assert _keeps(0.9 * (1 - SEARCH_MARGIN), 1.0, skip, spectral)
    assert not _keeps(a_bit_lower, 1.0, raw, skip)
    assert not _keeps(a_bit_lower, 1.0, raw, spectral)  # products over the spectrum alone: by the margin only
    assert _keeps(0.9 * (1 - SEARCH_MARGIN), 1.0, raw, spectral)
    assert _keeps(a_bit_lower, 1.0, asinh, raw)  # the same model squashed: any lower loss
    assert not _keeps(1.0, 1.0, asinh, raw)  # a tie keeps the first
    assert _keeps(1.0, float("nan"), asinh, raw)
    # complexity also needs the paired bootstrap's confidence; a free change never asks for it
    assert not _keeps(0.5, 1.0, raw, spectral, lambda: SEARCH_CONFIDENCE - 0.01)
    assert _keeps(0.5, 1.0, raw, spectral, lambda: SEARCH_CONFIDENCE)
    assert _keeps(0.99, 1.0, asinh, raw, lambda: 0.0)


def test_row_losses_are_the_terms_the_training_loss_averages() -> None:
    """Per-row losses (for the search's paired bootstrap) average to the loss training minimises."""
    for task_id in ("fro0", "planted_class"):
        ds = S.dataset_for(task_id, 100)
        t = ds.targets[0]
        ys = ds.encoded("val")
        out = torch.randn(len(ds.splits["val"]), t.width, dtype=torch.float64)
        rows = _row_losses(ds.targets, out, ys)
        assert rows.shape == (len(ds.splits["val"]),)
        assert float(rows.mean()) == pytest.approx(float(_loss(ds.targets, out, ys)), rel=1e-9)


def test_suite_labels_are_functions_of_delta_w_alone() -> None:
    ads, deltas, facts = T.make_zoo("mixed", 6, seed=3)
    gen = torch.Generator().manual_seed(0)
    for t in T.TASKS:
        if t.zoo != "mixed":
            continue
        moved = []
        for a in ads:  # the same ΔW in another gauge: the labels are recomputed from it
            d = {}
            for name, x in a.layers.items():
                R = torch.eye(x.rank, dtype=F64) + torch.randn(x.rank, x.rank, generator=gen, dtype=F64) / 3
                d[name] = (x.U.double() @ R) @ (x.V.double() @ torch.linalg.inv(R).T).T
            moved.append(d)
        assert T.labels(t, moved, facts) == pytest.approx(T.labels(t, deltas, facts), rel=1e-6, abs=1e-9), t.id
        for a, d in zip(ads, deltas):  # the stored float32 factors hold exactly the ΔW the labels use
            for name, x in a.layers.items():
                assert torch.equal(x.U.double() @ x.V.double().T, d[name])


def _fit(task_id: str, arch: str, n: int = 100, **hp) -> float:
    ds = S.dataset_for(task_id, n)
    res = train(ds, TrainOptions(arch=arch, hparams=hp, max_steps=700, progress=False, threads=1))
    m = res.metrics["test"][ds.targets[0].name]
    return m.get("r2") if ds.targets[0].kind == "regression" else m["accuracy"]


def test_default_glnet_learns_a_norm_and_a_direction_where_svd_sees_only_one() -> None:
    """The slice of the suite that failed before: a Frobenius norm (GL-net v1: R² < 0) and a linear
    functional u*ᵀ ΔW v* that no function of the spectrum can give (MLP+SVD: R² ≈ 0)."""
    assert _fit("fro0", "glnet") >= 0.95
    assert _fit("lin_rank1", "glnet") >= 0.9
    assert _fit("lin_rank1", "mlp-svd") <= 0.2


def test_search_compares_several_targets_by_their_relative_losses() -> None:
    """With two targets the search weighs each target's relative change alike: a model that halves a small
    loss and raises a large one by 10 % is the better one, though their summed loss says otherwise."""
    from lolscan.targets import layout, make_target

    n, gen = 200, torch.Generator().manual_seed(0)
    ta, tb = make_target("a", [0.0, 1.0], "regression"), make_target("b", [0.0, 1.0], "regression")
    layout([ta, tb])
    y = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    ys = {"a": (y[:, :1], torch.ones(n, dtype=torch.bool)), "b": (y[:, 1:], torch.ones(n, dtype=torch.bool))}
    noise = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    noise = noise / noise.pow(2).mean(0).sqrt()  # unit mean square per column

    def result(err_a: float, err_b: float) -> TrainResult:
        out = y + noise * torch.tensor([err_a, err_b], dtype=torch.float64)
        r = TrainResult(None, {}, [], 0, 0, 0.0, {}, TrainOptions(), best_loss=float(_loss([ta, tb], out, ys)))
        r.outputs, r.ys = {"val": out}, {"val": ys}
        return r

    kept, cand = result(0.1, 3.0), result(0.1 / 2 ** 0.5, 3.0 * 1.1 ** 0.5)  # loss a: 0.01 → 0.005; b: 9 → 9.9
    assert cand.best_loss > kept.best_loss  # summed, the candidate looks worse
    loss, kept_loss = _search_loss([ta, tb], cand, kept)
    assert kept_loss == 1.0 and loss == pytest.approx((0.5 * 1.1) ** 0.5, rel=1e-9)
    assert _search_loss([ta], cand, kept) == (cand.best_loss, kept.best_loss)  # one target: as before
    assert 0.0 <= _confidence([ta, tb], cand, kept) <= 1.0


def test_the_skip_is_tried_only_with_a_regression_target(tmp_path) -> None:
    """`train`'s search: the skip candidate (started at the regression targets' least-squares fit) for a
    regression label, not for a classification-only one, where it would only add a training run."""
    from lolscan.manifest import read_manifest
    from lolscan.training import prepare, train, write_synthetic_zoo

    manifest = read_manifest(write_synthetic_zoo(tmp_path, n=48, seed=1))
    opts = {"lr": 1e-3, "max_steps": 30, "min_steps": 0, "eval_every": 10, "progress": False, "threads": 1,
            "hparams": {"d": 4, "hidden": 16}}
    tried = {t: [e for e in train(prepare(manifest, [t], progress=False), TrainOptions(**opts)).tried]
             for t in ("score", "big")}
    assert any(e.get("skip") for e in tried["score"])
    assert tried["big"] and not any(e.get("skip") for e in tried["big"])
    assert {e.get("products") for e in tried["big"]} == {False, True}  # the other candidates still ran
