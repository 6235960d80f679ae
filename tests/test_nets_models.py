"""Metanetwork properties, in float64 on small random adapters.

Symmetries: GL-net, MLP+Dense, MLP+SVD are unchanged under an independent (Uᵢ R, Vᵢ R⁻ᵀ) per layer;
O-Align under orthogonal Qᵢ. Sensitivity: a real change of ΔW (negating one Uᵢ) moves GL-net but
not MLP+SVD. Padding, missing modules and the batched-vs-loop reference are checked too.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from lolscan import Adapter, Layer
from lolscan.nets import (
    ARCHITECTURES,
    GLNet,
    LayerShape,
    LayerSpec,
    build_model,
    collate,
    gl_gate,
    model_from_config,
)
from lolscan.nets.reference import glnet_loop_forward, per_layer_inputs

F64 = torch.float64
# Interleaved shapes so groups are not contiguous in spec order.
SPEC = LayerSpec(
    [LayerShape("a", 7, 5), LayerShape("b", 6, 7), LayerShape("c", 7, 5), LayerShape("d", 4, 4), LayerShape("e", 6, 7)]
)
GL_INVARIANT = {
    "glnet": {"d": 3, "depth": 3, "hidden": 16},
    "glnet-mean": {"d": 1, "pool": "mean", "hidden": 8},
    "mlp-svd": {"k": 6, "hidden": 16},
    "mlp-dense": {"hidden": 16},
}


def make(arch: str, **hp) -> torch.nn.Module:
    torch.manual_seed(0)
    name = "glnet" if arch.startswith("glnet") else arch
    return build_model(name, SPEC, 2, **hp).double()


def adapter(ranks: dict[str, int] | int = 3, *, gen: torch.Generator | None = None, source: str = "") -> Adapter:
    if isinstance(ranks, int):
        ranks = {s.name: ranks for s in SPEC}
    layers = {}
    for name, r in ranks.items():
        s = SPEC.get(name)
        U = torch.randn(s.n, r, generator=gen, dtype=F64)
        V = torch.randn(s.m, r, generator=gen, dtype=F64)
        layers[name] = Layer(U, V, shape=(s.n, s.m))
    return Adapter(layers=layers, format="test", source=source)


def gauge(ad: Adapter, kind: str, gen: torch.Generator) -> tuple[Adapter, dict[str, torch.Tensor]]:
    """Same ΔW per layer: (U R, V R⁻ᵀ) with an independent R per layer (orthogonal or well-conditioned GL)."""
    layers, mats = {}, {}
    for name, x in ad.layers.items():
        q1, _ = torch.linalg.qr(torch.randn(x.rank, x.rank, generator=gen, dtype=F64))
        if kind == "orth":
            R = q1
        else:
            q2, _ = torch.linalg.qr(torch.randn(x.rank, x.rank, generator=gen, dtype=F64))
            s = torch.rand(x.rank, generator=gen, dtype=F64) * 1.5 + 0.5  # singular values in [0.5, 2]
            R = q1 @ torch.diag(s) @ q2
        mats[name] = R
        layers[name] = Layer(x.U @ R, x.V @ torch.linalg.inv(R).T, shape=x.shape)
    return Adapter(layers=layers, format="test"), mats


def run(model, adapters) -> torch.Tensor:
    with torch.no_grad():
        return model(collate(adapters, SPEC, dtype=F64))


def assert_gl_invariant_and_padding_free(model, ads: list[Adapter], gen: torch.Generator) -> None:
    """``model`` gives the same outputs for ``ads`` under a random GL(r) gauge per layer and with every factor
    zero-padded by two ranks, and other outputs when one ΔW really changes."""
    ref = run(model, ads)
    moved = run(model, [gauge(a, "gl", gen)[0] for a in ads])
    padded = []
    for a in ads:
        b = adapter(1, gen=gen)
        b.layers = {k: type(x)(torch.nn.functional.pad(x.U, (0, 2)), torch.nn.functional.pad(x.V, (0, 2)), x.shape)
                    for k, x in a.layers.items()}
        padded.append(b)
    pad_out = run(model, padded)
    changed = run(model, [gauge(a, "gl", gen)[0] for a in ads[1:]] + [adapter(gen=gen)])
    assert torch.allclose(ref, moved, rtol=1e-9, atol=1e-11)
    assert torch.allclose(ref, pad_out, rtol=1e-9, atol=1e-11)
    assert not torch.allclose(ref, changed, rtol=1e-3)


@pytest.fixture()
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.mark.parametrize("arch", sorted(GL_INVARIANT))
def test_gl_invariance(arch: str, gen: torch.Generator) -> None:
    model = make(arch, **GL_INVARIANT[arch])
    ads = [adapter(gen=gen), adapter({"a": 2, "b": 4, "d": 1}, gen=gen)]
    model.fit(ads)
    moved = [gauge(a, "gl", gen)[0] for a in ads]
    y, y2 = run(model, ads), run(model, moved)
    assert y.abs().max() > 1e-3  # not a degenerate all-zero model
    torch.testing.assert_close(y2, y, rtol=1e-9, atol=1e-10)


def test_oalign_orthogonal_invariance_only(gen: torch.Generator) -> None:
    model = make("mlp-oalign", rank=3, hidden=16)
    train = [adapter(gen=gen) for _ in range(3)]
    model.fit(train)
    test = [adapter(gen=gen) for _ in range(2)]
    y = run(model, test)
    y_orth = run(model, [gauge(a, "orth", gen)[0] for a in test])
    torch.testing.assert_close(y_orth, y, rtol=1e-9, atol=1e-10)
    y_gl = run(model, [gauge(a, "gl", gen)[0] for a in test])
    assert (y_gl - y).abs().max() > 1e-4  # O-Align is not GL-invariant; the test above is not vacuous


def test_oalign_recovers_the_template(gen: torch.Generator) -> None:
    model = make("mlp-oalign", rank=3, hidden=16)
    template = adapter(gen=gen)
    model.set_template(template)
    rotated, _ = gauge(template, "orth", gen)
    for (U, V), g in zip(model.align(collate([rotated], SPEC, dtype=F64)), SPEC.groups):
        for j, i in enumerate(g.indices):
            x = template.layers[SPEC[i].name]
            torch.testing.assert_close(U[0, j], x.U, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(V[0, j], x.V, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("depth", [1, 3])
def test_equivariant_layers_commute_with_gauge(depth: int, gen: torch.Generator) -> None:
    model = make("glnet", d=4, depth=depth)
    ad = adapter(gen=gen)
    moved, mats = gauge(ad, "gl", gen)
    with torch.no_grad():
        before = model.equivariant(collate([ad], SPEC, dtype=F64))
        after = model.equivariant(collate([moved], SPEC, dtype=F64))
    for (U, V), (U2, V2), g in zip(before, after, SPEC.groups):
        for j, i in enumerate(g.indices):
            R = mats[SPEC[i].name]
            torch.testing.assert_close(U2[0, j], U[0, j] @ R, rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(V2[0, j], V[0, j] @ torch.linalg.inv(R).T, rtol=1e-9, atol=1e-10)


def test_gate_uses_row_and_column_sums_of_the_product(gen: torch.Generator) -> None:
    U, V = torch.randn(2, 5, 3, generator=gen, dtype=F64), torch.randn(2, 5, 3, generator=gen, dtype=F64)
    W = U @ V.transpose(-1, -2)
    gu, gv = gl_gate(U, V)
    torch.testing.assert_close(gu, U * torch.sigmoid(W.sum(-1, keepdim=True)))
    torch.testing.assert_close(gv, V * torch.sigmoid(W.sum(-2).unsqueeze(-1)))


def test_sign_flip_moves_glnet_but_not_svd(gen: torch.Generator) -> None:
    ad = adapter(gen=gen)
    layers = dict(ad.layers)
    x = layers["c"]
    layers["c"] = Layer(-x.U, x.V, shape=x.shape)  # ΔW_c -> -ΔW_c: same spectrum, different update
    flipped = Adapter(layers=layers, format="test")
    for arch in ("glnet", "mlp-dense"):
        model = make(arch, **GL_INVARIANT[arch])
        assert (run(model, [flipped]) - run(model, [ad])).abs().max() > 1e-4, arch
    svd = make("mlp-svd", **GL_INVARIANT["mlp-svd"])
    torch.testing.assert_close(run(svd, [flipped]), run(svd, [ad]), rtol=1e-10, atol=1e-12)


def test_svd_features_are_the_spectrum(gen: torch.Generator) -> None:
    model = make("mlp-svd", k=5)
    ad = adapter({"a": 2, "b": 4, "c": 3, "d": 4, "e": 1}, gen=gen)
    feats = model.features(collate([ad], SPEC, dtype=F64)).view(len(SPEC), 5)
    for i, s in enumerate(SPEC):
        x = ad.layers[s.name]
        expect = torch.zeros(5, dtype=F64)
        sv = torch.linalg.svdvals(x.U @ x.V.T)[:5]
        expect[: len(sv)] = sv
        expect[x.rank :] = 0.0
        torch.testing.assert_close(feats[i], expect, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("arch", sorted(GL_INVARIANT))
def test_rank_padding_is_exact(arch: str, gen: torch.Generator) -> None:
    model = make(arch, **GL_INVARIANT[arch])
    small, big = adapter(3, gen=gen), adapter(8, gen=gen)  # batched together: small is padded to rank 8
    alone = run(model, [small])
    together = run(model, [small, big])
    torch.testing.assert_close(together[:1], alone, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_missing_module_equals_explicit_zeros(arch: str, gen: torch.Generator) -> None:
    hp = {"rank": 3} if arch in ("mlp", "mlp-oalign") else {}
    model = make(arch, hidden=16, **hp)
    model.fit([adapter(gen=gen) for _ in range(3)])
    ad = adapter({"a": 3, "b": 3, "e": 3}, gen=gen)
    zeros = dict(ad.layers)
    for s in SPEC:
        if s.name not in zeros:
            zeros[s.name] = Layer(torch.zeros(s.n, 3, dtype=F64), torch.zeros(s.m, 3, dtype=F64), shape=(s.n, s.m))
    torch.testing.assert_close(run(model, [ad]), run(model, [Adapter(layers=zeros, format="test")]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("depth", "pool", "d"), [(1, "concat", 4), (3, "concat", 3), (2, "mean", 1)])
def test_batched_glnet_equals_per_layer_loop(depth: int, pool: str, d: int, gen: torch.Generator) -> None:
    model = make("glnet", d=d, depth=depth, pool=pool, hidden=16)
    ads = [adapter(gen=gen), adapter({"a": 2, "c": 5, "e": 1}, gen=gen), adapter({"d": 4}, gen=gen)]
    for a, scale in zip(ads, (1.0, 30.0, 0.01)):  # layers of very different size, so fit()'s scales matter
        for x in a.layers.values():
            x.U.mul_(scale)
    model.fit(ads)
    assert not torch.allclose(model.input_scale, torch.ones_like(model.input_scale))
    with torch.no_grad():
        batched = model(collate(ads, SPEC, dtype=F64))
        loop = glnet_loop_forward(model, per_layer_inputs(ads, SPEC, dtype=F64))
    torch.testing.assert_close(batched, loop, rtol=1e-10, atol=1e-12)


# Groups in spec order (identity permutation, each a range of positions) and a single group.
ORDERED_SPEC = LayerSpec([LayerShape("p", 7, 5), LayerShape("q", 7, 5), LayerShape("s", 4, 6)])
ONE_GROUP_SPEC = LayerSpec([LayerShape(x, 6, 5) for x in "xyz"])


def _random_adapters(spec: LayerSpec, ranks: list[int], gen: torch.Generator) -> list[Adapter]:
    return [
        Adapter(
            layers={s.name: Layer(torch.randn(s.n, r, generator=gen, dtype=F64), torch.randn(s.m, r, generator=gen, dtype=F64),
                                  shape=(s.n, s.m)) for s in spec},
            format="test",
        )
        for r in ranks
    ]


@pytest.mark.parametrize("spec", [SPEC, ORDERED_SPEC, ONE_GROUP_SPEC], ids=["interleaved", "ordered", "one-group"])
@pytest.mark.parametrize(("depth", "pool"), [(1, "concat"), (2, "concat"), (2, "mean")])
def test_glnet_fast_paths_equal_the_loop_in_any_input_layout(spec: LayerSpec, depth: int, pool: str, gen: torch.Generator) -> None:
    torch.manual_seed(0)
    model = build_model("glnet", spec, 2, d=3, depth=depth, pool=pool, hidden=8).double()
    ads = _random_adapters(spec, [2, 3, 1, 3], gen)
    model.fit(ads)
    batch = collate(ads, spec, dtype=F64)
    # The same values in plain contiguous [B, L, n, r] tensors (not collate's batch-inner layout).
    plain = replace(batch, groups=[replace(g, U=g.U.contiguous(), V=g.V.contiguous()) for g in batch.groups])
    assert not batch.groups[0].U.is_contiguous() and plain.groups[0].U.is_contiguous()
    with torch.no_grad():
        loop = glnet_loop_forward(model, per_layer_inputs(ads, spec, dtype=F64))
        torch.testing.assert_close(model(batch), loop, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(model(plain), loop, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(model.invariants(plain), model.invariants(batch), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("depth", [1, 3])
def test_glnet_gradients_equal_the_loop(depth: int, gen: torch.Generator) -> None:
    model = make("glnet", d=3, depth=depth, hidden=8)
    ads = [adapter(gen=gen), adapter({"a": 2, "c": 5, "e": 1}, gen=gen)]
    model.fit(ads)
    grads = []
    for fn in (lambda: model(collate(ads, SPEC, dtype=F64)), lambda: glnet_loop_forward(model, per_layer_inputs(ads, SPEC, dtype=F64))):
        model.zero_grad()
        fn().square().sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-10, atol=1e-12, msg=k)


def test_glnet_fit_sets_unit_rms_updates(gen: torch.Generator) -> None:
    model = make("glnet")
    ads = [adapter({"a": 2, "b": 3}, gen=gen), adapter({"a": 4, "d": 1}, gen=gen)]
    model.fit(ads)
    for i, s in enumerate(SPEC):
        deltas = [a.layers[s.name].delta() for a in ads if s.name in a.layers]
        if not deltas:
            assert model.input_scale[i] == 1.0
            continue
        ms = torch.stack([(w * w).mean() for w in deltas]).mean()
        assert float(model.input_scale[i] ** 4 * ms) == pytest.approx(1.0, rel=1e-9)


def test_standardisation_is_fit_on_training_features(gen: torch.Generator) -> None:
    model = make("mlp-svd", k=3)
    train = [adapter(gen=gen) for _ in range(6)]
    model.fit(train)
    x = model.features(collate(train, SPEC, dtype=F64))
    z = (x - model.feat_mean) / model.feat_std
    torch.testing.assert_close(z.mean(0), torch.zeros(x.shape[1], dtype=F64), atol=1e-9, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(x.shape[1], dtype=F64), atol=1e-9, rtol=0)


def test_fixed_rank_models_refuse_larger_ranks(gen: torch.Generator) -> None:
    for arch in ("mlp", "mlp-oalign"):
        model = make(arch, rank=3)
        run(model, [adapter(3, gen=gen), adapter({"a": 2, "b": 3}, gen=gen)])  # smaller ranks: zero-padded
        with pytest.raises(ValueError, match=r"reads modules of rank up to 3 .*; odd\.safetensors has ranks \[2, 4\]"):
            run(model, [adapter(3, gen=gen), adapter({"a": 2, "b": 4}, gen=gen, source="odd.safetensors")])
        with pytest.raises(ValueError, match="rank="):
            build_model(arch, SPEC, 1)


def test_dense_refuses_large_models_politely() -> None:
    big = LayerSpec([LayerShape(f"l{i}", 4096, 4096) for i in range(4)])
    with pytest.raises(ValueError, match="67,108,864 ΔW entries"):
        build_model("mlp-dense", big, 1)
    assert build_model("mlp-dense", SPEC, 1).feature_dim == SPEC.total_entries


def test_build_model_validates_names() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("transformer", SPEC, 1)
    with pytest.raises(ValueError, match="unknown hyperparameter.*width"):
        build_model("glnet", SPEC, 1, width=3)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_rebuild_from_hparams_and_safetensors(arch: str, tmp_path, gen: torch.Generator) -> None:
    hp = {"rank": 3} if arch in ("mlp", "mlp-oalign") else {}
    if arch == "glnet":
        hp = {"depth": 2}
    model = make(arch, **hp)
    ads = [adapter(gen=gen) for _ in range(3)]
    model.fit(ads)
    path = tmp_path / "m.safetensors"
    save_file(model.state_dict(), str(path))
    again = build_model(model.arch, model.spec, model.out_dim, **model.hparams).double()
    again.load_state_dict(load_file(str(path)))
    torch.testing.assert_close(run(again, ads), run(model, ads), rtol=0, atol=0)
    from_cfg = model_from_config(model.config()).double()
    from_cfg.load_state_dict(model.state_dict())
    torch.testing.assert_close(run(from_cfg, ads), run(model, ads), rtol=0, atol=0)
    assert isinstance(model_from_config(GLNet(SPEC, 1).config()), GLNet)


def test_dense_outputs_in_small_chunks_when_features_are_not_precomputed(gen: torch.Generator) -> None:
    """Training's evaluation of a FeatureMLP whose features were too big to precompute (``extract`` gave the
    FactorBatch back) makes them a few adapters at a time; every adapter still gets its own output."""
    from lolscan.training.loop import _outputs

    model = make("mlp-dense", hidden=16)
    model.eval()
    batch = collate([adapter(gen=gen) for _ in range(10)], SPEC, dtype=F64)
    assert model.extract(batch, max_elements=SPEC.total_entries * 9) is batch  # 10 adapters: too big, kept as factors
    with torch.no_grad():
        whole = model(batch)
    for per_chunk in (1, 3, 4, 10):  # 3 and 4 leave a ragged last chunk
        got = _outputs(model, batch, max_features=SPEC.total_entries * per_chunk)
        torch.testing.assert_close(got, whole.float(), rtol=1e-6, atol=1e-6)
