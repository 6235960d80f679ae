"""``log_spectra``: GL-net's spectral head and mlp-svd reading log(σ / ref) instead of σ.

Independent truth: singular values of the dense ΔW (torch.linalg.svdvals), the reference scale recomputed from
them (median over the training adapters of each layer's σ₁), invariance under random GL(r) gauges and zero
padding, and a label that is a known function of ΔW (a threshold in the log of the total Frobenius norm on a zoo
whose tenth adapters are 30-300× larger: damage setting in past a size of the update, as on the Qwen zoos).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from test_glnet_v2 import _dense_features
from test_nets_models import F64, SPEC, adapter, assert_gl_invariant_and_padding_free

from lolscan.nets import build_model, collate
from lolscan.nets.svd import LOG_FLOOR

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import invariant_tasks as T  # noqa: E402


def _zoo(gen: torch.Generator):
    # mixed ranks (some below k: their missing σ are zero padding) and one adapter without module "c"
    return [adapter({"a": 2, "b": 4, "d": 3, "e": 1}, gen=gen), adapter(3, gen=gen), adapter(gen=gen), adapter(4, gen=gen)]


def _dense_top(layer, k: int) -> torch.Tensor:
    """The top ``k`` singular values of the dense ΔW, zero-padded (zeros for a missing module)."""
    return _dense_features(layer, k, summaries=False)[0]


def _dense_refs(ads) -> torch.Tensor:
    """Per layer the median over adapters of the non-zero σ₁ (the mean of the middle two for an even count)."""
    refs = []
    for s in SPEC:
        tops = sorted(float(_dense_top(a.layers.get(s.name), 1)[0]) for a in ads if s.name in a.layers)
        tops = [t for t in tops if t > 0]
        n = len(tops)
        refs.append(tops[n // 2] if n % 2 else (tops[n // 2 - 1] + tops[n // 2]) / 2)
    return torch.tensor(refs, dtype=F64)


@pytest.mark.parametrize("arch", ["glnet", "mlp-svd"])
def test_log_features_are_the_logs_of_the_dense_singular_values(arch: str) -> None:
    gen = torch.Generator().manual_seed(11)
    ads = _zoo(gen)
    k = 4
    torch.manual_seed(0)
    if arch == "glnet":
        model = build_model("glnet", SPEC, 2, d=3, hidden=16, spectral=k, products=False, log_spectra=True).double()
    else:
        model = build_model("mlp-svd", SPEC, 2, k=k, hidden=16, log_spectra=True).double()
    model.fit(ads)
    refs = _dense_refs(ads)
    assert torch.allclose(model.spec_ref, refs, rtol=1e-9)
    want = torch.stack([torch.cat([torch.log(_dense_top(a.layers.get(s.name), k) / ref + LOG_FLOOR)
                                   for s, ref in zip(SPEC, refs)]) for a in ads])
    with torch.no_grad():
        batch = collate(ads, SPEC, dtype=F64)
        if arch == "glnet":
            got = model.spectral_features(batch)
            out, head_in = model(batch), (want - model.spec_mean) / model.spec_std
        else:
            got = model.features(batch)
            out, head_in = model(batch), (want - model.feat_mean) / model.feat_std
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-9)
        assert torch.allclose(out, model.head(head_in), rtol=1e-9, atol=1e-10)
        # the features the standardising statistics were taken of are the log features
        assert torch.allclose((model.spec_mean if arch == "glnet" else model.feat_mean), want.mean(0), atol=1e-9)
    assert torch.isfinite(got).all() and got.min() == pytest.approx(math.log(LOG_FLOOR))  # padding: the floor


@pytest.mark.parametrize("arch,hp", [("glnet", {"products": False}), ("glnet", {"products": False, "summaries": True}),
                                     ("glnet", {"products": True, "squash": "asinh"}), ("mlp-svd", {})])
def test_log_spectra_keep_gl_invariance_and_padding(arch: str, hp: dict) -> None:
    gen = torch.Generator().manual_seed(12)
    torch.manual_seed(0)
    extra = {"d": 3, "spectral": 3} if arch == "glnet" else {"k": 5}
    model = build_model(arch, SPEC, 2, hidden=16, log_spectra=True, **extra, **hp).double()
    ads = _zoo(gen)
    model.fit(ads)
    assert_gl_invariant_and_padding_free(model, ads, gen)


def test_the_card_records_log_spectra_only_when_on_and_rebuilds_it() -> None:
    gen = torch.Generator().manual_seed(13)
    ads = _zoo(gen)
    for arch, extra in (("glnet", {"spectral": 3, "products": False}), ("mlp-svd", {"k": 3})):
        plain = build_model(arch, SPEC, 1, **extra)
        assert "log_spectra" not in plain.hparams
        if arch == "mlp-svd":  # its reference scale exists only for the logs: older cards' state dicts stay as they were
            assert "spec_ref" not in plain.state_dict()
        torch.manual_seed(0)
        model = build_model(arch, SPEC, 1, log_spectra=True, **extra).double()
        model.fit(ads)
        assert model.hparams["log_spectra"] is True
        again = build_model(arch, SPEC, 1, **model.hparams).double()
        again.load_state_dict(model.state_dict())
        batch = collate(ads, SPEC, dtype=F64)
        with torch.no_grad():
            assert torch.equal(again(batch), model(batch))
            assert not torch.allclose(plain.double()(batch), model(batch))
    # with no spectral features GL-net has nothing to take the log of: the card does not claim it
    assert "log_spectra" not in build_model("glnet", SPEC, 1, spectral=0, log_spectra=True).hparams


def _threshold_dataset(n_train: int):
    """The heavy zoo of the invariant suite (every tenth adapter 30-300× larger) labelled with a sigmoid of
    log Σᵢ ‖ΔWᵢ‖_F centred on its median (computed from the dense float64 updates): a threshold inside the bulk."""
    from lolscan.nets import LayerSpec
    from lolscan.targets import fit_normalisation, layout, make_target
    from lolscan.training import Dataset

    n = n_train + 120
    ads, deltas, _ = T.make_zoo("heavy", n, seed=5)
    logs = [math.log(sum(float(torch.linalg.matrix_norm(d)) for d in dws.values())) for dws in deltas]
    mid = sorted(logs)[n // 2]
    values = [1 / (1 + math.exp(-4 * (x - mid))) for x in logs]
    target = make_target("damage", values, "regression")
    layout([target])
    splits = {"train": list(range(n_train)), "val": list(range(n_train, n_train + 60)), "test": list(range(n_train + 60, n))}
    fit_normalisation(target, [values[i] for i in splits["train"]])
    return Dataset(None, ads, [target], {"damage": values}, splits, LayerSpec.from_adapters(ads), "synthetic", "column", 0)


def test_log_spectra_learn_a_threshold_in_the_bulk_where_raw_spectra_do_not() -> None:
    from lolscan.training import TrainOptions, train

    ds = _threshold_dataset(200)

    def r2(**hp) -> float:
        opts = TrainOptions(arch="mlp-svd", hparams={"k": 4, **hp}, max_steps=600, progress=False, threads=1, transform="none")
        return train(ds, opts).metrics["test"]["damage"]["r2"]

    logged, raw = r2(log_spectra=True), r2()
    assert logged >= 0.95  # measured 0.974; raw σ 0.73: the outliers' scale squeezes the bulk's σ together
    assert raw <= logged - 0.1
