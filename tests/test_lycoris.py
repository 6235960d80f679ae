"""LoHa/LoKr factors against the dense ΔW computed the LyCORIS/ComfyUI way (scale applied once)."""
from __future__ import annotations

import math

import pytest
import torch

from lolscan.errors import InputError
from lolscan.formats.lycoris import (
    loha_factors,
    lokr_factors,
    lokr_scale_rank,
    lycoris_scale,
    maybe_compress,
)

F64 = torch.float64


def rnd(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# ---- dense oracles, written straight from the loaders' formulas ------------------------


def dense_loha(w1a, w1b, w2a, w2b, s, out_shape, t1=None, t2=None):
    """ComfyUI `weight_adapter/loha.py`: s·(w1a@w1b)·(w2a@w2b), or the Tucker einsum."""
    if t1 is None:
        m1 = w1a @ w1b.reshape(w1b.shape[0], -1)
        m2 = w2a @ w2b.reshape(w2b.shape[0], -1)
    else:
        m1 = torch.einsum("i j k l, j r, i p -> p r k l", t1, w1b, w1a)
        m2 = torch.einsum("i j k l, j r, i p -> p r k l", t2, w2b, w2a)
    return (s * m1 * m2).reshape(out_shape).reshape(out_shape[0], -1)


def dense_lokr(s, w1, w2, out_shape):
    """A1111/ComfyUI `make_kron`: W₁ unsqueezed to [a, c, 1, 1] when W₂ is 4-D."""
    if w2.dim() == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    return (s * torch.kron(w1, w2.contiguous())).reshape(out_shape).reshape(out_shape[0], -1)


def tucker(t, wa, wb):
    return torch.einsum("i j k l, j r, i p -> p r k l", t, wb, wa)


def rel_err(U, V, ref) -> float:
    got = U.double() @ V.double().T
    assert got.shape == ref.shape
    return float((got - ref).abs().max() / ref.abs().max())


# ---- LoHa --------------------------------------------------------------------------------


def test_loha_linear_exact_and_rank(gen):
    out, inn, r1, r2, s = 11, 9, 2, 3, 0.75
    w1a, w1b, w2a, w2b = rnd(out, r1, gen=gen), rnd(r1, inn, gen=gen), rnd(out, r2, gen=gen), rnd(r2, inn, gen=gen)
    U, V = loha_factors(w1a, w1b, w2a, w2b, scale=s, out_shape=(out, inn), dtype=F64)
    assert U.shape == (out, r1 * r2) and V.shape == (inn, r1 * r2)
    ref = dense_loha(w1a, w1b, w2a, w2b, s, (out, inn))
    assert rel_err(U, V, ref) < 1e-13
    assert torch.linalg.matrix_rank(ref) == r1 * r2  # generic: the bound r1·r2 is attained


@pytest.mark.parametrize("four_d_b", [False, True])
def test_loha_conv_without_tucker(gen, four_d_b):
    out, inn, kh, kw, r, s = 10, 3, 3, 2, 2, 1.5
    w1a, w2a = rnd(out, r, gen=gen), rnd(out, r, gen=gen)
    w1b, w2b = rnd(r, inn * kh * kw, gen=gen), rnd(r, inn * kh * kw, gen=gen)
    ref = dense_loha(w1a, w1b, w2a, w2b, s, (out, inn, kh, kw))
    if four_d_b:  # LyCORIS functional layout stores w_b as [r, in, kh, kw]
        w1b, w2b = w1b.reshape(r, inn, kh, kw), w2b.reshape(r, inn, kh, kw)
    U, V = loha_factors(w1a, w1b, w2a, w2b, scale=s, out_shape=(out, inn, kh, kw), dtype=F64)
    assert U.shape == (out, r * r) and V.shape == (inn * kh * kw, r * r)
    assert rel_err(U, V, ref) < 1e-13


def test_loha_tucker_conv(gen):
    out, inn, kh, kw, r, s = 13, 4, 3, 2, 3, 0.4
    t1, t2 = rnd(r, r, kh, kw, gen=gen), rnd(r, r, kh, kw, gen=gen)
    w1a, w2a = rnd(r, out, gen=gen), rnd(r, out, gen=gen)  # transposed orientation in Tucker mode
    w1b, w2b = rnd(r, inn, gen=gen), rnd(r, inn, gen=gen)
    U, V = loha_factors(w1a, w1b, w2a, w2b, scale=s, t1=t1, t2=t2, out_shape=(out, inn, kh, kw), dtype=F64)
    assert U.shape == (out, r * r) and V.shape == (inn * kh * kw, r * r)
    ref = dense_loha(w1a, w1b, w2a, w2b, s, (out, inn, kh, kw), t1=t1, t2=t2)
    assert rel_err(U, V, ref) < 1e-13
    # the same dense update through the actual convolution: F.conv2d with ΔW vs U, V
    x = rnd(2, inn, 5, 6, gen=gen)
    y_ref = torch.nn.functional.conv2d(x, ref.reshape(out, inn, kh, kw))
    y_got = torch.nn.functional.conv2d(x, (U @ V.T).reshape(out, inn, kh, kw))
    assert torch.allclose(y_got, y_ref, rtol=1e-10, atol=1e-10)


def test_loha_default_float32_and_half_inputs(gen):
    out, inn, r, s = 8, 12, 2, 4.0
    ws = [rnd(out, r, gen=gen).half(), rnd(r, inn, gen=gen).half(), rnd(out, r, gen=gen).bfloat16(), rnd(r, inn, gen=gen).bfloat16()]
    U, V = loha_factors(*ws, scale=s, out_shape=(out, inn))
    assert U.dtype == torch.float32 and V.dtype == torch.float32
    ref = dense_loha(*(w.double() for w in ws), s, (out, inn))  # the stored values, exactly
    assert rel_err(U, V, ref) < 1e-6


def test_negative_scale_sign_on_u_and_even_split(gen):
    out, inn, r = 6, 7, 2
    ws = [rnd(out, r, gen=gen), rnd(r, inn, gen=gen), rnd(out, r, gen=gen), rnd(r, inn, gen=gen)]
    Up, Vp = loha_factors(*ws, scale=2.25, out_shape=(out, inn), dtype=F64)
    Un, Vn = loha_factors(*ws, scale=-2.25, out_shape=(out, inn), dtype=F64)
    assert torch.equal(Un, -Up) and torch.equal(Vn, Vp)
    assert rel_err(Un, Vn, dense_loha(*ws, -2.25, (out, inn))) < 1e-13
    U1, V1 = loha_factors(*ws, scale=1.0, out_shape=(out, inn), dtype=F64)
    assert torch.allclose(Vp, 1.5 * V1) and torch.allclose(Up, 1.5 * U1)  # √2.25 on each side


# ---- LoKr --------------------------------------------------------------------------------


def test_lokr_full_w1_decomposed_w2_linear(gen):
    a, c, b, d, r, alpha = 3, 2, 5, 7, 2, 3.0
    w1, w2a, w2b = rnd(a, c, gen=gen), rnd(b, r, gen=gen), rnd(r, d, gen=gen)
    tensors = {"lora_unet_x.lokr_w1": w1, "lora_unet_x.lokr_w2_a": w2a, "lora_unet_x.lokr_w2_b": w2b}
    s = lycoris_scale(alpha, tensors, "lokr")
    assert s == pytest.approx(alpha / r)
    U, V = lokr_factors(scale=s, w1=w1, w2a=w2a, w2b=w2b, out_shape=(a * b, c * d), dtype=F64)
    assert U.shape[1] == min(a, c) * r  # k·r with k = rank(W1)
    assert rel_err(U, V, dense_lokr(s, w1, w2a @ w2b, (a * b, c * d))) < 1e-13


def test_lokr_decomposed_both(gen):
    a, c, b, d, r1, r2, s = 4, 5, 3, 6, 1, 2, 0.5
    w1a, w1b, w2a, w2b = rnd(a, r1, gen=gen), rnd(r1, c, gen=gen), rnd(b, r2, gen=gen), rnd(r2, d, gen=gen)
    U, V = lokr_factors(scale=s, w1a=w1a, w1b=w1b, w2a=w2a, w2b=w2b, out_shape=(a * b, c * d), dtype=F64)
    assert U.shape == (a * b, r1 * r2) and V.shape == (c * d, r1 * r2)
    assert rel_err(U, V, dense_lokr(s, w1a @ w1b, w2a @ w2b, (a * b, c * d))) < 1e-13


def test_lokr_full_both_scale_one_regardless_of_alpha(gen):
    a, c, b, d = 2, 3, 4, 3
    w1, w2 = rnd(a, c, gen=gen), rnd(b, d, gen=gen)
    tensors = {"m.lokr_w1": w1, "m.lokr_w2": w2}
    assert lokr_scale_rank(tensors) is None
    for alpha in (None, 0.0, 1.0, 16.0, torch.tensor(7.0, dtype=torch.bfloat16)):
        assert lycoris_scale(alpha, tensors, "lokr") == 1.0
    U, V = lokr_factors(scale=1.0, w1=w1, w2=w2, out_shape=(a * b, c * d), dtype=F64)
    assert U.shape[1] == min(a, c) * min(b, d)
    assert rel_err(U, V, dense_lokr(1.0, w1, w2, (a * b, c * d))) < 1e-13


def test_lokr_tucker_conv(gen):
    a, c, b, d, kh, kw, r, s = 2, 3, 4, 5, 3, 2, 2, 0.8
    w1 = rnd(a, c, gen=gen)
    t2, w2a, w2b = rnd(r, r, kh, kw, gen=gen), rnd(r, b, gen=gen), rnd(r, d, gen=gen)
    shape = (a * b, c * d, kh, kw)
    U, V = lokr_factors(scale=s, w1=w1, w2a=w2a, w2b=w2b, t2=t2, out_shape=shape, dtype=F64)
    assert U.shape == (a * b, min(a, c) * r) and V.shape == (c * d * kh * kw, min(a, c) * r)
    ref = dense_lokr(s, w1, tucker(t2, w2a, w2b), shape)
    assert rel_err(U, V, ref) < 1e-13
    x = rnd(1, c * d, 4, 5, gen=gen)
    y_ref = torch.nn.functional.conv2d(x, ref.reshape(shape))
    y_got = torch.nn.functional.conv2d(x, (U @ V.T).reshape(shape))
    assert torch.allclose(y_got, y_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout", ["flat_b", "four_d_b", "full_w2"])
def test_lokr_conv_without_tucker(gen, layout):
    a, c, b, d, kh, kw, r, s = 3, 2, 2, 5, 3, 3, 2, 1.25
    shape = (a * b, c * d, kh, kw)
    w1 = rnd(a, c, gen=gen)
    w2a, w2b = rnd(b, r, gen=gen), rnd(r, d * kh * kw, gen=gen)
    if layout == "full_w2":
        w2 = rnd(b, d, kh, kw, gen=gen)
        U, V = lokr_factors(scale=s, w1=w1, w2=w2, out_shape=shape, dtype=F64)
        ref = dense_lokr(s, w1, w2, shape)  # 4-D kron with W1 unsqueezed
        assert U.shape[1] == min(a, c) * min(b, d * kh * kw)
    elif layout == "flat_b":  # modules/lokr.py: W2 = w2a @ w2b is 2-D, kron is 2-D
        U, V = lokr_factors(scale=s, w1=w1, w2a=w2a, w2b=w2b, out_shape=shape, dtype=F64)
        ref = dense_lokr(s, w1, w2a @ w2b, shape)
        # ...and equals the 4-D kron of the same W2 viewed as [b, d, kh, kw]
        ref4 = dense_lokr(s, w1, (w2a @ w2b).reshape(b, d, kh, kw), shape)
        assert torch.allclose(ref, ref4, rtol=0, atol=1e-14)
        assert U.shape[1] == min(a, c) * r
    else:  # functional/lokr.py stores w2b as [r, d, kh, kw]
        w2b4 = w2b.reshape(r, d, kh, kw)
        U, V = lokr_factors(scale=s, w1=w1, w2a=w2a, w2b=w2b4, out_shape=shape, dtype=F64)
        ref = dense_lokr(s, w1, (w2a @ w2b4.reshape(r, -1)).reshape(b, d, kh, kw), shape)
    assert rel_err(U, V, ref) < 1e-13


def test_lokr_conv1d_tucker_peft_layout(gen):
    """PEFT stores a Conv1d Tucker core as [r, r, k, 1]; the weight is [out, in, k]."""
    a, c, b, d, k, r, s = 2, 2, 3, 4, 3, 2, 0.3
    w1, t2, w2a, w2b = rnd(a, c, gen=gen), rnd(r, r, k, 1, gen=gen), rnd(r, b, gen=gen), rnd(r, d, gen=gen)
    shape = (a * b, c * d, k)
    U, V = lokr_factors(scale=s, w1=w1, w2a=w2a, w2b=w2b, t2=t2, out_shape=shape, dtype=F64)
    assert rel_err(U, V, dense_lokr(s, w1, tucker(t2, w2a, w2b), shape)) < 1e-13


def test_lokr_rank_deficient_full_w1_and_oversized_w1_rank(gen):
    a, c, b, d, r, s = 4, 3, 2, 5, 1, 1.0
    w1 = rnd(a, 1, gen=gen) @ rnd(1, c, gen=gen)  # rank 1
    w2a, w2b = rnd(b, r, gen=gen), rnd(r, d, gen=gen)
    U, V = lokr_factors(scale=s, w1=w1, w2a=w2a, w2b=w2b, out_shape=(a * b, c * d), dtype=F64)
    assert U.shape[1] == 1 * r
    assert rel_err(U, V, dense_lokr(s, w1, w2a @ w2b, (a * b, c * d))) < 1e-13
    # decomposed W1 with inner size 6 > min(a, c) = 3: re-factored down to 3
    w1a, w1b = rnd(a, 6, gen=gen), rnd(6, c, gen=gen)
    U, V = lokr_factors(scale=s, w1a=w1a, w1b=w1b, w2a=w2a, w2b=w2b, out_shape=(a * b, c * d), dtype=F64)
    assert U.shape[1] == min(a, c) * r
    assert rel_err(U, V, dense_lokr(s, w1a @ w1b, w2a @ w2b, (a * b, c * d))) < 1e-13


def test_lokr_negative_scale_float32(gen):
    a, c, b, d, r = 3, 4, 5, 2, 1
    w1, w2a, w2b = rnd(a, c, gen=gen), rnd(b, r, gen=gen), rnd(r, d, gen=gen)
    tensors = {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b}
    s = lycoris_scale(torch.tensor(-2.0, dtype=torch.float16), tensors, "lokr")
    assert s == -2.0
    U, V = lokr_factors(scale=s, w1=w1.half(), w2a=w2a.half(), w2b=w2b.half(), out_shape=(a * b, c * d))
    assert U.dtype == torch.float32
    ref = dense_lokr(s, w1.half().double(), w2a.half().double() @ w2b.half().double(), (a * b, c * d))
    assert rel_err(U, V, ref) < 1e-6


# ---- scale rules -------------------------------------------------------------------------


def test_lycoris_scale_rules(gen):
    loha = {"x.hada_w1_a": rnd(5, 4, gen=gen), "x.hada_w1_b": rnd(4, 6, gen=gen)}
    assert lycoris_scale(2.0, loha, "loha") == 0.5
    assert lycoris_scale(None, loha, "loha") == 1.0
    assert lycoris_scale(0, loha, "loha") == 1.0
    assert lycoris_scale(torch.tensor([8.0]), loha, "LoHa") == 2.0
    # LoKr: r from w2_b when W2 is decomposed, else from w1_b
    w1_only = {"lokr_w1_a": rnd(3, 2, gen=gen), "lokr_w1_b": rnd(2, 3, gen=gen), "lokr_w2": rnd(4, 4, gen=gen)}
    assert lokr_scale_rank(w1_only) == 2 and lycoris_scale(3.0, w1_only, "lokr") == 1.5
    both = {**w1_only, "lokr_w2_a": rnd(4, 5, gen=gen), "lokr_w2_b": rnd(5, 4, gen=gen)}
    del both["lokr_w2"]
    assert lokr_scale_rank(both) == 5 and lycoris_scale(10.0, both, "lokr") == 2.0
    # Tucker: w2_b is [r, d] too
    tk = {"lokr_w1": rnd(2, 2, gen=gen), "lokr_t2": rnd(3, 3, 3, 3, gen=gen), "lokr_w2_a": rnd(3, 4, gen=gen), "lokr_w2_b": rnd(3, 5, gen=gen)}
    assert lycoris_scale(1.5, tk, "lokr") == 0.5
    with pytest.raises(ValueError):
        lycoris_scale(1.0, loha, "locon")
    with pytest.raises(InputError):
        lycoris_scale(float("nan"), loha, "loha")


# ---- shape errors ------------------------------------------------------------------------


def test_shape_mismatch_raises_input_error(gen):
    with pytest.raises(InputError):
        loha_factors(rnd(6, 2, gen=gen), rnd(2, 5, gen=gen), rnd(6, 2, gen=gen), rnd(2, 5, gen=gen), scale=1.0, out_shape=(6, 4))
    with pytest.raises(InputError):
        lokr_factors(scale=1.0, w1=rnd(2, 2, gen=gen), w2=rnd(3, 3, gen=gen), out_shape=(6, 7))
    with pytest.raises(InputError):  # kernel of lokr_t2 disagrees with the weight
        lokr_factors(scale=1.0, w1=rnd(2, 2, gen=gen), t2=rnd(2, 2, 3, 3, gen=gen), w2a=rnd(2, 3, gen=gen),
                     w2b=rnd(2, 2, gen=gen), out_shape=(6, 4, 1, 9))
    with pytest.raises(InputError):
        lokr_factors(scale=1.0, w1=rnd(2, 2, gen=gen), w2a=rnd(3, 2, gen=gen), out_shape=(6, 4))
    with pytest.raises(InputError):
        loha_factors(rnd(2, 6, gen=gen), rnd(2, 4, gen=gen), rnd(2, 6, gen=gen), rnd(2, 4, gen=gen), scale=1.0,
                     t1=rnd(2, 2, 3, 3, gen=gen), out_shape=(6, 4, 3, 3))


# ---- compression -------------------------------------------------------------------------


def test_maybe_compress_exact_when_rank_exceeds_dims(gen):
    out, inn, kh, kw, r, s = 5, 2, 3, 3, 3, 0.7  # r² = 9 > min(5, 18)
    t1, t2 = rnd(r, r, kh, kw, gen=gen), rnd(r, r, kh, kw, gen=gen)
    w1a, w2a, w1b, w2b = rnd(r, out, gen=gen), rnd(r, out, gen=gen), rnd(r, inn, gen=gen), rnd(r, inn, gen=gen)
    shape = (out, inn, kh, kw)
    U, V = loha_factors(w1a, w1b, w2a, w2b, scale=s, t1=t1, t2=t2, out_shape=shape, dtype=F64)
    assert U.shape[1] == r * r  # returned as is; the caller reports it
    Uc, Vc = maybe_compress(U, V)
    assert Uc.shape == (out, out) and Vc.shape == (inn * kh * kw, out)
    ref = dense_loha(w1a, w1b, w2a, w2b, s, shape, t1=t1, t2=t2)
    assert rel_err(Uc, Vc, ref) < 1e-12
    # balanced canonical form: UᵀU == VᵀV == Σ (diagonal)
    assert torch.allclose(Uc.T @ Uc, Vc.T @ Vc, atol=1e-10)
    # small factors pass through untouched
    u, v = rnd(7, 2, gen=gen).float(), rnd(9, 2, gen=gen).float()
    uc, vc = maybe_compress(u, v)
    assert torch.equal(uc, u) and torch.equal(vc, v)


def test_maybe_compress_rtol_drops_negligible_directions(gen):
    u = torch.cat([rnd(8, 2, gen=gen), 1e-9 * rnd(8, 1, gen=gen)], dim=1)
    v = rnd(6, 3, gen=gen)
    uc, vc = maybe_compress(u, v, rtol=1e-6)
    assert uc.shape[1] == 2
    ref = u @ v.T
    assert float((uc @ vc.T - ref).abs().max()) < 1e-7 * math.sqrt(float((ref**2).sum()))


# ---- cross-check against PEFT's own LoHa/LoKr (a port of LyCORIS; a project dependency) ---


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(40, 48)  # LoKr splits: out 6·8, in 5·8
        self.conv = torch.nn.Conv2d(32, 48, (3, 3))  # out 6·8, in 4·8
        self.pw = torch.nn.Conv2d(10, 15, 1)

    def forward(self, x):  # pragma: no cover - never called
        return x


def _peft_cases():
    from peft import LoHaConfig, LoKrConfig

    targets = ["lin", "conv", "pw"]
    yield "loha", LoHaConfig(r=3, alpha=5, target_modules=targets)
    yield "loha", LoHaConfig(r=2, alpha=3, target_modules=targets, use_effective_conv2d=True)
    yield "lokr", LoKrConfig(r=2, alpha=3, target_modules=targets)  # full w1, decomposed w2
    yield "lokr", LoKrConfig(r=2, alpha=3, target_modules=targets, decompose_both=True)
    yield "lokr", LoKrConfig(r=2, alpha=3, target_modules=targets, use_effective_conv2d=True)
    yield "lokr", LoKrConfig(r=12, alpha=3, target_modules=targets)  # rank too big: full w2


@pytest.mark.parametrize("case", range(6))
def test_matches_peft_delta_weight(case):
    pytest.importorskip("peft")
    from peft import get_peft_model

    algo, cfg = list(_peft_cases())[case]
    torch.manual_seed(100 + case)
    model = get_peft_model(_Tiny(), cfg)
    prefix = "hada_" if algo == "loha" else "lokr_"
    for name in ("lin", "conv", "pw"):
        mod = getattr(model.base_model.model, name)
        with torch.no_grad():
            for pname, p in mod.named_parameters():
                if pname.startswith(prefix):
                    p.copy_(torch.randn_like(p))
        t = {pname.split(".")[0]: p.detach().double() for pname, p in mod.named_parameters() if pname.startswith(prefix)}
        s = float(mod.scaling["default"])
        shape = tuple(mod.get_base_layer().weight.shape)
        with torch.no_grad():
            ref = mod.get_delta_weight("default").double().reshape(shape[0], -1)
        if algo == "loha":
            U, V = loha_factors(t["hada_w1_a"], t["hada_w1_b"], t["hada_w2_a"], t["hada_w2_b"], scale=s,
                                t1=t.get("hada_t1"), t2=t.get("hada_t2"), out_shape=shape, dtype=F64)
        else:
            kw = {k.removeprefix("lokr_").replace("_", ""): v for k, v in t.items()}
            U, V = lokr_factors(scale=s, out_shape=shape, dtype=F64, **kw)
            if "lokr_w2" not in t or "lokr_w1" not in t:  # PEFT's alpha/r agrees with the LyCORIS rule here
                assert lycoris_scale(cfg.alpha, t, "lokr") == pytest.approx(s)
        assert rel_err(U, V, ref) < 1e-6, (name, sorted(t))  # PEFT computes in float32
