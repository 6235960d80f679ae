"""`mlp` and `mlp-oalign` on zoos of mixed LoRA ranks: every module zero-padded to the model's ``rank``
(the zoo's largest), a module of a larger rank refused, naming the file.

ΔW = U Vᵀ is unchanged by appending zero columns to U and V, so a rank-2 update and the same update
written at rank 4 with two zero columns must read the same. O-Align's Procrustes step on padded factors
must stay well defined (no NaN; a rotation of the rank-2 factors does not move the aligned factors).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lolscan import Adapter, Layer
from lolscan.checkpoint import check_fits, load_checkpoint
from lolscan.errors import IncompatibleAdapter
from lolscan.manifest import read_manifest
from lolscan.nets import LayerShape, LayerSpec, build_model, collate, common_rank, max_rank
from lolscan.nets.mlp import flat_factors
from lolscan.training import TrainOptions, prepare, save_checkpoint, train, write_synthetic_zoo

F64 = torch.float64
SPEC = LayerSpec([LayerShape("a", 7, 5), LayerShape("b", 6, 7), LayerShape("c", 7, 5), LayerShape("d", 4, 4)])


@pytest.fixture()
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(7)


def adapter(ranks: dict[str, int] | int, gen: torch.Generator, source: str = "") -> Adapter:
    ranks = {s.name: ranks for s in SPEC} if isinstance(ranks, int) else ranks
    layers = {}
    for name, r in ranks.items():
        s = SPEC.get(name)
        layers[name] = Layer(torch.randn(s.n, r, generator=gen, dtype=F64), torch.randn(s.m, r, generator=gen, dtype=F64), (s.n, s.m))
    return Adapter(layers, "test", source=source)


def padded(a: Adapter, rank: int) -> Adapter:
    """The same ΔW, every module written at ``rank`` with zero columns appended."""
    pad = torch.nn.functional.pad
    return Adapter({k: Layer(pad(x.U, (0, rank - x.rank)), pad(x.V, (0, rank - x.rank)), x.shape, scale=x.scale)
                    for k, x in a.layers.items()}, a.format, source=a.source)


def rotated(a: Adapter, gen: torch.Generator) -> Adapter:
    """The same ΔW, every module's factors times a random orthogonal matrix (O-Align's symmetry)."""
    out = {}
    for k, x in a.layers.items():
        q, _ = torch.linalg.qr(torch.randn(x.rank, x.rank, generator=gen, dtype=F64))
        out[k] = Layer(x.U @ q, x.V @ q, x.shape)
    return Adapter(out, "test", source=a.source)


def feats(model, ads: list[Adapter]) -> torch.Tensor:
    with torch.no_grad():
        return model.features(collate(ads, SPEC, dtype=F64))


def make(arch: str, rank: int):
    torch.manual_seed(0)
    return build_model(arch, SPEC, 2, rank=rank, hidden=8).double()


def test_max_rank_is_the_common_rank_of_a_single_rank_zoo(gen):
    one = [adapter(4, gen) for _ in range(3)]
    assert max_rank(one) == common_rank(one) == 4
    mixed = one + [adapter({"a": 2, "b": 8}, gen)]
    assert max_rank(mixed) == 8
    with pytest.raises(ValueError, match="share one rank"):
        common_rank(mixed)


@pytest.mark.parametrize("arch", ["mlp", "mlp-oalign"])
def test_a_rank_2_update_reads_as_the_same_update_written_at_rank_4(arch, gen):
    model = make(arch, 4)
    train = [adapter(4, gen) for _ in range(3)] + [adapter(2, gen)]
    model.fit(train)
    low = [adapter(2, gen), adapter({"a": 1, "b": 3, "d": 2}, gen)]  # per-module ranks too, and a module absent
    x = feats(model, low)
    assert torch.isfinite(x).all() and x.abs().max() > 0
    torch.testing.assert_close(feats(model, [padded(a, 4) for a in low]), x, rtol=0, atol=1e-12)
    # alone (collated at rank 2) or beside a rank-4 adapter (the batch pads to 4): the same rows
    beside = feats(model, [low[0], train[0]])
    torch.testing.assert_close(beside[0], x[0], rtol=0, atol=1e-12)
    y = model(collate(low, SPEC, dtype=F64))
    assert torch.isfinite(y).all()


def test_mlp_features_are_the_factors_with_zero_columns(gen):
    model = make("mlp", 4)
    a = adapter(2, gen)
    x = feats(model, [a])[0]
    assert x.numel() == sum((s.n + s.m) * 4 for s in SPEC)
    at = 0
    batch = collate([a], SPEC, dtype=F64)
    for g in batch.groups:
        for t in (g.U, g.V):
            k = t[0].numel() // t.shape[-1] * 4
            block = x[at : at + k].reshape(*t.shape[1:-1], 4)
            at += k
            torch.testing.assert_close(block[..., :2], t[0], rtol=0, atol=0)
            assert (block[..., 2:] == 0).all()
    assert at == x.numel()
    torch.testing.assert_close(x, flat_factors(collate([padded(a, 4)], SPEC, dtype=F64), 4)[0], rtol=0, atol=0)


def test_oalign_on_padded_factors_is_well_defined(gen):
    """A rank-2 input to a rank-4 O-Align: M = Uᵀ T_U + Vᵀ T_V has two zero rows, so half of its SVD is
    arbitrary; the aligned factors must not depend on it: they keep ΔW, are finite, and a rotation of
    the rank-2 factors gives the same aligned factors (as for full-rank inputs)."""
    model = make("mlp-oalign", 4)
    model.set_template(adapter(4, gen))
    a = adapter({"a": 2, "b": 2, "c": 1}, gen)  # "d" absent: all-zero factors, M = 0
    b = rotated(a, gen)
    aligned = model.align(collate([a], SPEC, dtype=F64))
    again = model.align(collate([b], SPEC, dtype=F64))
    for (U, V), (U2, V2), g in zip(aligned, again, SPEC.groups):
        assert torch.isfinite(U).all() and torch.isfinite(V).all()
        torch.testing.assert_close(U2, U, rtol=0, atol=1e-10)
        torch.testing.assert_close(V2, V, rtol=0, atol=1e-10)
        for j, i in enumerate(g.indices):
            name = SPEC[i].name
            want = a.layers[name].delta() if name in a.layers else torch.zeros(g.n, g.m, dtype=F64)
            torch.testing.assert_close(U[0, j] @ V[0, j].T, want, rtol=0, atol=1e-10)


def test_oalign_template_is_a_full_rank_adapter(gen):
    """On a zoo of ranks 2 and 4 the template is the first rank-4 adapter; where no adapter has the
    largest rank in every module, per module the first factors of the largest rank."""
    model = make("mlp-oalign", 4)
    train = [adapter(2, gen), adapter(4, gen), adapter(4, gen)]
    model.fit(train)
    tu, _ = model.templates(0)
    torch.testing.assert_close(tu[0], train[1].layers[SPEC[SPEC.groups[0].indices[0]].name].U, rtol=0, atol=0)
    mixed = [adapter({"a": 4, "b": 1, "c": 2, "d": 3}, gen), adapter({"a": 2, "b": 3, "c": 4}, gen)]
    model = make("mlp-oalign", 4)
    model.fit(mixed)
    for gi, g in enumerate(SPEC.groups):
        tu, tv = model.templates(gi)
        for j, i in enumerate(g.indices):
            name = SPEC[i].name
            src = max(mixed, key=lambda a: a.layers[name].rank if name in a.layers else 0)  # the first of the largest
            x = src.layers[name]
            torch.testing.assert_close(tu[j, :, : x.rank], x.U, rtol=0, atol=0)
            torch.testing.assert_close(tv[j, :, : x.rank], x.V, rtol=0, atol=0)
            assert (tu[j, :, x.rank :] == 0).all()
    assert torch.isfinite(feats(model, mixed)).all()


@pytest.mark.parametrize("arch", ["mlp", "mlp-oalign"])
def test_a_module_above_the_rank_is_refused_naming_the_file(arch, gen):
    model = make(arch, 3)
    model.fit([adapter(3, gen), adapter(2, gen)])
    with pytest.raises(ValueError, match=r"reads modules of rank up to 3 .*; big\.safetensors has ranks \[2, 4\]"):
        model(collate([adapter(2, gen), adapter({"a": 2, "b": 4}, gen, source="big.safetensors")], SPEC, dtype=F64))
    rule = {"name": "toy", "base_model": "x", "architecture": arch, "rank": 3}
    check_fits(adapter({"a": 1, "b": 3}, gen, source="low.safetensors"), SPEC, rule)  # lower ranks fit
    with pytest.raises(IncompatibleAdapter, match=r"rank up to 3") as err:
        check_fits(adapter({"a": 2, "b": 4}, gen, source="big.safetensors"), SPEC, rule)
    assert err.value.path == "big.safetensors"


@pytest.fixture(scope="module")
def mixed_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    zoo = write_synthetic_zoo(root / "zoo", n=60, rank=(2, 4), seed=3)
    big = write_synthetic_zoo(root / "big", n=2, rank=6, seed=3)  # the same modules at rank 6
    return zoo, big


@pytest.mark.parametrize("arch", ["mlp", "mlp-oalign"])
def test_train_and_predict_on_a_mixed_rank_zoo(arch, mixed_zoo, tmp_path, monkeypatch):
    zoo, big = mixed_zoo
    ds = prepare(read_manifest(zoo), ["score", "planted"], progress=False)
    assert {r for a in ds.adapters for r in a.ranks} == {2, 3, 4}
    result = train(ds, TrainOptions(arch=arch, hparams={"hidden": 16}, max_steps=40, eval_every=10, progress=False, threads=1))
    assert result.model.hparams["rank"] == 4
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in result.test_scores.values())
    assert all(v == v for m in result.metrics["test"].values() for v in m.values() if isinstance(v, float))
    ckpt = save_checkpoint(ds, result, tmp_path / "ck", name="mixed")
    ck = load_checkpoint(ckpt)
    assert ck.card["hparams"]["rank"] == 4
    low = [a for a in ds.adapters if set(a.ranks) == {2}][:2]
    preds = ck.predict(low + [padded(low[0], 4)])
    assert preds[2]["score"]["value"] == pytest.approx(preds[0]["score"]["value"], rel=1e-5, abs=1e-6)
    assert all(p["score"]["value"] == p["score"]["value"] and abs(p["score"]["value"]) < 1e6 for p in preds)
    import lolscan

    six = lolscan.load(str(big.parent / "lora_0000"))
    with pytest.raises(IncompatibleAdapter, match=r"rank up to 4.*ranks \[6\]") as err:
        ck.require_fits(six)
    assert "lora_0000" in str(err.value.path)
    # and through `lolscan predict`: the rank-2/3/4 files scored, the rank-6 file refused by name
    from typer.testing import CliRunner

    from lolscan.cli.app import _register, app

    _register()
    files = [str(zoo.parent / f"lora_{i:04d}") for i in range(6)] + [str(big.parent / "lora_0000")]
    r = CliRunner().invoke(app, ["predict", *files, "--model", str(ckpt), "--format", "json", "--no-progress", "--threads", "1"])
    assert r.exit_code == 4, r.output
    rows = {"/".join(Path(row["source"]).parts[-3:]): row for row in json.loads(r.stdout)["results"]}
    files = ["/".join(Path(f).parts[-3:]) for f in files]
    assert rows[files[-1]]["status"] == "incompatible" and "rank up to 4" in rows[files[-1]]["error"]
    direct = ck.predict([lolscan.load(str(zoo.parent / f"lora_{i:04d}")) for i in range(6)])
    for f, p in zip(files[:-1], direct):
        assert rows[f]["status"] == "ok", rows[f]
        assert rows[f]["predictions"]["score"]["value"] == pytest.approx(p["score"]["value"], rel=1e-4, abs=1e-5)

