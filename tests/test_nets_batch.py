"""collate: per-shape groups, exact rank padding, zeros for untouched modules, spec-order bookkeeping."""
from __future__ import annotations

import pytest
import torch

from lolscan import Adapter, Layer
from lolscan.errors import IncompatibleAdapter
from lolscan.nets import LayerShape, LayerSpec, collate

SPEC = LayerSpec(
    [LayerShape("l0", 6, 5), LayerShape("l1", 4, 5), LayerShape("l2", 6, 5), LayerShape("l3", 3, 3), LayerShape("l4", 4, 5)]
)


def adapter(ranks: dict[str, int], source: str = "") -> Adapter:
    layers = {}
    for name, r in ranks.items():
        s = SPEC.get(name)
        layers[name] = Layer(torch.randn(s.n, r, dtype=torch.float64).float(), torch.randn(s.m, r).float(), shape=(s.n, s.m))
    return Adapter(layers=layers, format="test", source=source)


def test_layout_padding_and_zeros() -> None:
    a = adapter({"l0": 3, "l1": 2, "l2": 5, "l4": 1}, source="a")
    b = adapter({"l1": 4, "l3": 2}, source="b")
    batch = collate([a, b], SPEC, dtype=torch.float64)
    assert batch.batch_size == 2 and batch.sources == ["a", "b"] and batch.dtype == torch.float64
    assert [(g.n, g.m, g.indices, g.rank) for g in batch.groups] == [(6, 5, (0, 2), 5), (4, 5, (1, 4), 4), (3, 3, (3,), 2)]
    for g in batch.groups:
        for b_i, ad in enumerate((a, b)):
            for j, i in enumerate(g.indices):
                layer = ad.layers.get(SPEC[i].name)
                U, V = g.U[b_i, j], g.V[b_i, j]
                if layer is None:  # untouched module: all-zero factors, rank 0
                    assert not U.any() and not V.any() and g.ranks[b_i, j] == 0
                    continue
                r = layer.rank
                assert torch.equal(U[:, :r], layer.U.double()) and torch.equal(V[:, :r], layer.V.double())
                assert not U[:, r:].any() and not V[:, r:].any()  # padding is exact zeros...
                assert torch.allclose(U @ V.T, layer.U.double() @ layer.V.double().T, rtol=1e-12, atol=1e-12)  # ...so ΔW is kept
                assert g.ranks[b_i, j] == r
    assert batch.ranks().tolist() == [[3, 2, 5, 0, 1], [0, 4, 0, 2, 0]]
    # storage is [L_g, n, B, r_g] (batch-inner) so per-layer left products need no transposing copy
    assert all(g.U.permute(1, 2, 0, 3).is_contiguous() and g.V.permute(1, 2, 0, 3).is_contiguous() for g in batch.groups)
    moved = batch.to(dtype=torch.float32).select([1, 0])
    assert all(g.U.permute(1, 2, 0, 3).is_contiguous() for g in moved.groups)
    assert batch.rank_set() == {1, 2, 3, 4, 5}


def test_uniform_rank_layers_are_copied_exactly() -> None:
    ads = [adapter({name: 2 for name in SPEC.names}) for _ in range(3)]
    ads.append(adapter({"l3": 1}))  # l3 mixes ranks 2 and 1; the other layers miss in the last adapter
    for batch, expect in ((collate(ads[:3], SPEC), 3), (collate(ads, SPEC), 4)):
        assert batch.batch_size == expect
        for g in batch.groups:
            for j, i in enumerate(g.indices):
                for b, ad in enumerate(ads[:expect]):
                    layer = ad.layers.get(SPEC[i].name)
                    if layer is None:
                        assert not g.U[b, j].any() and not g.V[b, j].any()
                    else:
                        assert torch.equal(g.U[b, j, :, : layer.rank], layer.U) and torch.equal(g.V[b, j, :, : layer.rank], layer.V)
                        assert not g.U[b, j, :, layer.rank :].any()


def test_to_spec_order_and_select() -> None:
    batch = collate([adapter({"l0": 1}), adapter({"l3": 2}), adapter({"l1": 1})], SPEC)
    per_group = [torch.tensor(g.indices).expand(3, -1) for g in batch.groups]
    assert batch.to_spec_order(per_group).tolist() == [list(range(5))] * 3
    sub = batch.select([2, 0])
    assert sub.batch_size == 2 and sub.ranks().tolist() == [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]
    assert torch.equal(sub.groups[0].U[1], batch.groups[0].U[0])


def test_collate_refuses_what_does_not_fit() -> None:
    wrong = Adapter(layers={"l0": Layer(torch.randn(5, 2), torch.randn(5, 2), shape=(5, 5))}, format="test", source="w")
    with pytest.raises(IncompatibleAdapter, match="l0 is 5×5"):
        collate([adapter({"l0": 1}), wrong], SPEC)
    with pytest.raises(ValueError):
        collate([], SPEC)


def test_select_gives_the_same_adapters_in_either_layout() -> None:
    """Minibatches drawn from collate's batch-inner storage, from `batch_outer` and as ranges (views) hold
    the same ΔW, ranks, sources and cached rows as collating those adapters afresh."""
    g = torch.Generator().manual_seed(0)
    names = SPEC.names
    ads = [adapter({n: int(torch.randint(1, 4, (1,), generator=g)) for n in names if torch.rand(1, generator=g) < 0.7},
                   source=f"a{i}") for i in range(7)]
    batch = collate(ads, SPEC, dtype=torch.float64)
    batch.cache["row"] = torch.arange(7.0)
    outer = batch.batch_outer()
    assert all(gr.U.is_contiguous() and gr.V.is_contiguous() for gr in outer.groups)
    for rows in ([4, 1, 6], [2, 3, 4], slice(1, 5), [5], [6, 6, 0]):
        idx = list(range(7))[rows] if isinstance(rows, slice) else rows
        fresh = collate([ads[i] for i in idx], SPEC, dtype=torch.float64)
        for b in (batch, outer):
            sub = b.select(rows)
            assert sub.sources == [f"a{i}" for i in idx] and sub.cache["row"].tolist() == [float(i) for i in idx]
            assert torch.equal(sub.ranks(), fresh.ranks())
            for gs, gf in zip(sub.groups, fresh.groups):
                assert torch.allclose(gs.U @ gs.V.mT, gf.U @ gf.V.mT, rtol=0, atol=1e-12)
    view = batch.select(slice(2, 5))  # a range is a view of the batch, not a copy
    assert view.groups[0].U.untyped_storage().data_ptr() == batch.groups[0].U.untyped_storage().data_ptr()
