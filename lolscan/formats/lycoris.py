"""Exact low-rank factors for LyCORIS LoHa (``hada_*``) and LoKr (``lokr_*``) layers.

Both algorithms store a weight update that is not a plain ``B @ A`` product, yet is
exactly low-rank (docs/FORMATS.md §8):

* LoHa: ``ΔW = s · M₁ ⊙ M₂`` with ``Mₖ = Uₖ Vₖᵀ``. The Hadamard product of two
  rank-r matrices is ``U Vᵀ`` with the row-wise Khatri-Rao (face-splitting) factors
  ``U[i,(p,q)] = U₁[i,p]·U₂[i,q]``, ``V[j,(p,q)] = V₁[j,p]·V₂[j,q]`` (rank r₁·r₂).
* LoKr: ``ΔW = s · kron(W₁, W₂)``; with ``W₁ = P Qᵀ`` and ``W₂ = U₂ V₂ᵀ`` (flattened),
  ``kron(W₁, W₂) = kron(P, U₂) · kron(Q, V₂)ᵀ`` (rank k·r).

Conventions: ΔW is in PyTorch's weight orientation ``[out, in·kh·kw]`` (conv kernels
flattened in ``(in, kh, kw)`` order, as ``weight.reshape(out, -1)``). All work is done in
float64; results are float32 unless ``dtype`` says otherwise. The scale ``s`` is split
evenly: both factors carry ``√|s|``, ``U`` also carries ``sign(s)``. The numeric oracle is
the ComfyUI/A1111 application (scale applied once), not LyCORIS ``get_diff_weight``,
which multiplies the scale a second time on top of ``get_weight``.

Inconsistent shapes raise `InputError` (exit code 3) without a path; readers should
re-raise it with the file's path (``InputError(str(e), path=...)``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..errors import InputError

__all__ = [
    "loha_factors",
    "lokr_factors",
    "lycoris_scale",
    "lokr_scale_rank",
    "lokr_rank_for_scale",
    "maybe_compress",
]

_F64 = torch.float64


# --------------------------------------------------------------------------- helpers


def _f64(t: Tensor) -> Tensor:
    return t.detach().to(device="cpu", dtype=_F64)


def _flat_dims(out_shape: Sequence[int]) -> tuple[int, int]:
    shape = tuple(int(d) for d in out_shape)
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise InputError(f"bad target weight shape {shape}")
    return shape[0], math.prod(shape[1:])


def _factor_dense(w: Tensor) -> tuple[Tensor, Tensor]:
    """Balanced exact factors ``(P, Q)`` with ``P @ Q.T == w``, k = numerical rank (≥ 1).

    Singular values below ``max(p, q)·eps₆₄·σ_max`` are dropped (numpy's matrix_rank rule):
    what is discarded is ~1e-14 relative, far below float32 resolution.
    """
    p, q = w.shape
    u, sv, vh = torch.linalg.svd(w, full_matrices=False)
    tol = max(p, q) * torch.finfo(_F64).eps * (float(sv[0]) if sv.numel() else 0.0)
    k = max(int((sv > tol).sum()), 1)
    root = sv[:k].sqrt()
    return u[:, :k] * root, vh[:k].T * root


def _lowrank(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``(u, v)`` as given when its inner size r ≤ min(rows); otherwise exact re-factoring
    of the (small) dense product down to its numerical rank."""
    if u.shape[1] <= min(u.shape[0], v.shape[0]):
        return u, v
    return _factor_dense(u @ v.T)


def _tucker_pair(t: Tensor, wa: Tensor, wb: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Factors of the LyCORIS Tucker rebuild ``einsum('i j ..., j r, i p -> p r ...', t, wb, wa)``.

    ``t [r1, r2, *k]``, ``wa [r1, out]``, ``wb [r2, in]`` (note: w_a is stored *transposed*
    relative to the non-Tucker layout). Result: ``U = waᵀ`` (out × r1) and
    ``V = N.reshape(r1, -1)ᵀ`` with ``N[a, i, *k] = Σ_b t[a, b, *k]·wb[b, i]``.
    """
    if t.ndim < 3 or wa.ndim != 2 or wb.ndim != 2 or t.shape[0] != wa.shape[0] or t.shape[1] != wb.shape[0]:
        raise InputError(
            f"{name}: Tucker shapes do not pair: t {tuple(t.shape)}, w_a {tuple(wa.shape)}, w_b {tuple(wb.shape)}"
        )
    n = torch.einsum("a b ..., b i -> a i ...", t, wb)  # [r1, in, *k]
    return wa.T, n.reshape(n.shape[0], -1).T


def _product_pair(wa: Tensor, wb: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Factors of ``wa @ wb.reshape(r, -1)``: ``(wa, wbᵀ)`` (``wa [p, r]``, ``wb [r, ...]``)."""
    wa = wa.reshape(wa.shape[0], -1) if wa.ndim > 2 else wa
    if wa.ndim != 2 or wb.ndim < 2 or wa.shape[1] != wb.shape[0]:
        raise InputError(f"{name}: factor shapes do not pair: a {tuple(wa.shape)}, b {tuple(wb.shape)}")
    return wa, wb.reshape(wb.shape[0], -1).T


def _kron2(x: Tensor, y: Tensor) -> Tensor:
    """``torch.kron`` of two matrices via broadcasting (torch.kron fails on some
    transposed inputs with a size-1 dimension: 'view size is not compatible')."""
    (p, k), (q, r) = x.shape, y.shape
    return (x[:, None, :, None] * y[None, :, None, :]).reshape(p * q, k * r)


def _finish(u: Tensor, v: Tensor, scale: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    s = float(scale)
    if not math.isfinite(s):
        raise InputError(f"non-finite scale {s}")
    root = math.sqrt(abs(s))
    u = u * (root if s >= 0 else -root)
    v = v * root
    return u.to(dtype).contiguous(), v.to(dtype).contiguous()


def _strip_ones(dims: Sequence[int]) -> tuple[int, ...]:
    dims = tuple(int(d) for d in dims)
    while dims and dims[-1] == 1:
        dims = dims[:-1]
    return dims


def _check_kernel(name: str, got: Sequence[int], out_shape: Sequence[int]) -> None:
    """The stored kernel dims must be the weight's (trailing 1s ignored: PEFT stores a
    Conv1d Tucker core as ``[r, r, k, 1]``)."""
    if _strip_ones(got) != _strip_ones(out_shape[2:]):
        raise InputError(f"{name}: kernel {tuple(got)} does not match weight shape {tuple(out_shape)}")


# --------------------------------------------------------------------------- LoHa


def loha_factors(
    w1a: Tensor,
    w1b: Tensor,
    w2a: Tensor,
    w2b: Tensor,
    *,
    scale: float,
    t1: Tensor | None = None,
    t2: Tensor | None = None,
    out_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Exact ``(U, V)`` with ``U Vᵀ = scale·(W₁ ⊙ W₂)`` flattened to ``[out, in·kh·kw]``.

    Non-Tucker: ``Wₖ = wₖa @ wₖb`` (``wₖa [out, r]``, ``wₖb [r, in·kh·kw]`` or
    ``[r, in, kh, kw]``). Tucker (``t1``/``t2`` given): ``wₖa [r, out]``, ``wₖb [r, in]``,
    ``tₖ [r, r, kh, kw]``. Rank of the result is r₁·r₂ (each rₖ first capped at its
    factor's min(out, in·kh·kw), which only matters for oversized ranks).
    """
    n, m = _flat_dims(out_shape)
    if (t1 is None) != (t2 is None):
        raise InputError("LoHa: hada_t1 and hada_t2 must both be present or both absent")
    if t1 is None:
        pairs = [_product_pair(_f64(w1a), _f64(w1b), "hada_w1"), _product_pair(_f64(w2a), _f64(w2b), "hada_w2")]
    else:
        assert t2 is not None
        for t in (t1, t2):
            _check_kernel("LoHa Tucker", t.shape[2:], out_shape)
        pairs = [
            _tucker_pair(_f64(t1), _f64(w1a), _f64(w1b), "hada_*1"),
            _tucker_pair(_f64(t2), _f64(w2a), _f64(w2b), "hada_*2"),
        ]
    for k, (u, v) in enumerate(pairs, 1):
        if u.shape[0] != n or v.shape[0] != m:
            raise InputError(
                f"LoHa: factor {k} gives a {u.shape[0]}×{v.shape[0]} update, weight {tuple(out_shape)} needs {n}×{m}"
            )
    (u1, v1), (u2, v2) = (_lowrank(u, v) for u, v in pairs)
    u = (u1[:, :, None] * u2[:, None, :]).reshape(n, -1)
    v = (v1[:, :, None] * v2[:, None, :]).reshape(m, -1)
    return _finish(u, v, scale, dtype)


# --------------------------------------------------------------------------- LoKr


def _lokr_w1(w1: Tensor | None, w1a: Tensor | None, w1b: Tensor | None) -> tuple[Tensor, Tensor]:
    if w1 is not None:
        w = _f64(w1)
        if w.ndim > 2 and all(d == 1 for d in w.shape[2:]):
            w = w.reshape(w.shape[0], w.shape[1])
        if w.ndim != 2:
            raise InputError(f"LoKr: lokr_w1 must be 2-D, got {tuple(w1.shape)}")
        return _factor_dense(w)
    if w1a is None or w1b is None:
        raise InputError("LoKr: needs lokr_w1 or both lokr_w1_a and lokr_w1_b")
    if w1b.ndim != 2:
        raise InputError(f"LoKr: lokr_w1_b must be 2-D, got {tuple(w1b.shape)}")
    return _lowrank(*_product_pair(_f64(w1a), _f64(w1b), "lokr_w1"))


def _lokr_w2(
    w2: Tensor | None, w2a: Tensor | None, w2b: Tensor | None, t2: Tensor | None, out_shape: Sequence[int]
) -> tuple[Tensor, Tensor]:
    if w2 is not None:
        w = _f64(w2)
        if w.ndim < 2:
            raise InputError(f"LoKr: lokr_w2 must be at least 2-D, got {tuple(w2.shape)}")
        if w.ndim > 2:
            _check_kernel("LoKr lokr_w2", w.shape[2:], out_shape)
        return _factor_dense(w.reshape(w.shape[0], -1))
    if w2a is None or w2b is None:
        raise InputError("LoKr: needs lokr_w2 or both lokr_w2_a and lokr_w2_b")
    if t2 is not None:
        _check_kernel("LoKr lokr_t2", t2.shape[2:], out_shape)
        return _lowrank(*_tucker_pair(_f64(t2), _f64(w2a), _f64(w2b), "lokr_*2"))
    if w2b.ndim > 2:
        _check_kernel("LoKr lokr_w2_b", w2b.shape[2:], out_shape)
    return _lowrank(*_product_pair(_f64(w2a), _f64(w2b), "lokr_w2"))


def lokr_factors(
    *,
    scale: float,
    w1: Tensor | None = None,
    w1a: Tensor | None = None,
    w1b: Tensor | None = None,
    w2: Tensor | None = None,
    w2a: Tensor | None = None,
    w2b: Tensor | None = None,
    t2: Tensor | None = None,
    out_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    peft_conv1d: bool = False,
) -> tuple[Tensor, Tensor]:
    """Exact ``(U, V)`` with ``U Vᵀ = scale·kron(W₁, W₂)`` flattened to ``[out, in·kh·kw]``.

    ``W₁ = lokr_w1 [a, c]`` or ``w1a [a, r] @ w1b [r, c]``; ``W₂ = lokr_w2 [b, d(, kh, kw)]``
    or ``w2a [b, r] @ w2b [r, d·kh·kw]`` or Tucker ``t2 [r, r, kh, kw]`` with ``w2a [r, b]``,
    ``w2b [r, d]``. For convs W₁ acts as ``[a, c, 1, 1]`` (LyCORIS ``make_kron``), which
    flattens to the same matrix as the 2-D ``kron(W₁, W₂.reshape(b, -1))``.
    A full ``lokr_w1``/``lokr_w2`` is factored exactly by SVD at its numerical rank
    (≤ min of its sides), so the result has rank k·r with k = rank(W₁).

    ``peft_conv1d``: PEFT's Conv1d LoKr with a full 3-D ``lokr_w2 [b, d, k]`` (only that
    case). peft computes ``torch.kron(W₁, W₂).reshape(out, in, k)`` without unsqueezing
    W₁, so torch.kron treats W₁ as ``[1, a, c]``: the product is ``[b, a·d, c·k]`` and the
    reshape reads it as ``ΔW[(ib, ia), (jd, jc, kk)] = W₁[ia, jc]·W₂[ib, jd, kk]``, i.e.
    the usual layout with the output index split as (b, a) instead of (a, b) and the
    input-channel index as (d, c) instead of (c, d). The factors are permuted to match.
    """
    if peft_conv1d and (w2 is None or w2.ndim != 3):
        raise InputError("LoKr: the PEFT Conv1d layout applies only to a full 3-D lokr_w2")
    n, m = _flat_dims(out_shape)
    p, q = _lokr_w1(w1, w1a, w1b)  # W₁ = P Qᵀ, [a, k], [c, k]
    u2, v2 = _lokr_w2(w2, w2a, w2b, t2, out_shape)  # W₂ = U₂ V₂ᵀ, [b, r], [d·kh·kw, r]
    a, c, b, dk = p.shape[0], q.shape[0], u2.shape[0], v2.shape[0]
    if a * b != n or c * dk != m:
        raise InputError(
            f"LoKr: kron of W1 {a}×{c} and W2 {b}×{dk} is {a * b}×{c * dk}, weight {tuple(out_shape)} needs {n}×{m}"
        )
    u, v = _kron2(p, u2), _kron2(q, v2)  # rows (a, b); rows of v (c, d, k)
    if peft_conv1d:
        d, k = w2.shape[1], w2.shape[2]
        u = u.reshape(a, b, -1).transpose(0, 1).reshape(n, -1)
        v = v.reshape(c, d, k, -1).transpose(0, 1).reshape(m, -1)
    return _finish(u, v, scale, dtype)


# --------------------------------------------------------------------------- scale


def _find(tensors: Mapping[str, Tensor], name: str) -> Tensor | None:
    """The tensor stored under ``name`` or ``<module>.name``."""
    if name in tensors:
        return tensors[name]
    suffix = "." + name
    for key, value in tensors.items():
        if key.endswith(suffix):
            return value
    return None


def lokr_scale_rank(tensors: Mapping[str, Tensor]) -> int | None:
    """The r of LoKr's ``alpha / r``: ``lokr_w2_b.shape[0]`` if W₂ is decomposed, else
    ``lokr_w1_b.shape[0]`` if W₁ is, else None (both full ⇒ scale 1). ComfyUI's rule."""
    for name in ("lokr_w2_b", "lokr_w1_b"):
        t = _find(tensors, name)
        if t is not None:
            return int(t.shape[0])
    return None


lokr_rank_for_scale = lokr_scale_rank  # the name used in the task brief


def lycoris_scale(alpha: float | Tensor | None, tensors: Mapping[str, Tensor], algo: str) -> float:
    """LyCORIS/ComfyUI scale for one module: ``alpha / r``, with ``r`` from tensor shapes.

    ``alpha`` None or 0 ⇒ 1 (kohya/LyCORIS construct with alpha = r). LoHa: ``r =
    hada_w1_b.shape[0]``. LoKr: see `lokr_scale_rank`; both factors full ⇒ 1 whatever
    alpha says. The stored alpha already carries the rsLoRA adjustment, so ``alpha / r``
    also reproduces rs_lora files. (PEFT LoKr instead uses config ``alpha / r`` even when
    both factors are full; the PEFT reader uses `peft_config.peft_lycoris_scale` instead.)
    """
    algo = algo.lower()
    if algo not in ("loha", "lokr"):
        raise ValueError(f"lycoris_scale: unknown algo {algo!r} (expected 'loha' or 'lokr')")
    if algo == "loha":
        t = _find(tensors, "hada_w1_b")
        if t is None:
            raise InputError("LoHa: hada_w1_b missing")
        r: int | None = int(t.shape[0])
    else:
        r = lokr_scale_rank(tensors)
        if r is None:
            return 1.0
    if alpha is None:
        return 1.0
    a = float(alpha.detach().double().reshape(-1)[0]) if isinstance(alpha, Tensor) else float(alpha)
    if not math.isfinite(a):
        raise InputError(f"non-finite alpha {a}")
    if a == 0.0:
        return 1.0
    if r <= 0:
        raise InputError(f"{algo}: rank 0 factor")
    return a / r


# --------------------------------------------------------------------------- compression


def maybe_compress(
    U: Tensor, V: Tensor, *, rtol: float = 0.0, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """Re-factor ``U Vᵀ`` exactly to rank ``min(R, n, m)`` (QR of both, SVD of the core).

    With ``rtol > 0`` also drops singular values ≤ ``rtol·σ_max`` (then no longer exact).
    Factors already at rank ≤ min(n, m) are returned unchanged when ``rtol == 0``.
    Output is balanced: ``U' = Q_U P √Σ``, ``V' = Q_V W √Σ``.
    """
    dtype = dtype or U.dtype
    n, r = U.shape
    m = V.shape[0]
    if rtol == 0.0 and r <= min(n, m):
        return U.to(dtype), V.to(dtype)
    qu, ru = torch.linalg.qr(_f64(U))
    qv, rv = torch.linalg.qr(_f64(V))
    p, sv, wh = torch.linalg.svd(ru @ rv.T, full_matrices=False)
    k = sv.numel()
    if rtol > 0.0 and k:
        k = max(int((sv > rtol * sv[0]).sum()), 1)
    root = sv[:k].sqrt()
    return (qu @ p[:, :k] * root).to(dtype).contiguous(), (qv @ wh[:k].T * root).to(dtype).contiguous()
