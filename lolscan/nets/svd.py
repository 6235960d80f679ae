"""``mlp-svd``: the top-k singular values of each ΔWᵢ = Uᵢ Vᵢᵀ, then an MLP.

Singular values come from an r×r core R_U R_Vᵀ with R_Uᵀ R_U = UᵀU and R_Vᵀ R_V = VᵀV (`singular_values`),
so ΔW is never formed. GL-invariant, but blind to everything but the spectrum (e.g. a sign flip).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..adapter import Adapter
from .batch import FactorBatch
from .common import FeatureMLP, _chunks, mlp_hparams
from .spec import LayerSpec

SPECTRA = "spectra"  # `FactorBatch.cache` key of `batch_spectra`
_CHUNK_BYTES = 1 << 20  # float64 copy per step of `gram` on a CPU: stays in cache for its matmul
_DEVICE_CHUNK_BYTES = 256 << 20  # elsewhere: one step for SD-sized batches, bounded for large models


def gram(X: torch.Tensor) -> torch.Tensor:
    """``[..., r, r]`` float64 XᵀX of ``X: [..., n, r]``. A collated ``[B, L, n, r]`` is copied into float64
    ``[L, B, r, n]`` for batched matmuls: on a GPU in one step (at most 256 MB of copy per step), on a CPU a
    few layers at a time into a buffer of about 1 MB that the matmul reads from cache (on the dev CPU 4.9 ms
    per SD1.5 adapter, against 8 ms copying all layers first and 23 ms letting matmul copy collate's
    ``[B, L]`` batches, which do not fold into one batch dimension). The float64 copy, not the arithmetic,
    is most of the cost."""
    if X.dim() != 4:
        x = X.to(torch.float64)
        return x.mT @ x
    B, L, n, r = X.shape
    src = X.permute(1, 0, 3, 2)  # [L, B, r, n]
    budget = _CHUNK_BYTES if X.device.type == "cpu" else _DEVICE_CHUNK_BYTES
    step = max(1, min(L, budget // max(1, B * r * n * 8)))
    out = torch.empty((L, B, r, r), dtype=torch.float64, device=X.device)
    buf = torch.empty((step, B, r, n), dtype=torch.float64, device=X.device)
    for s in range(0, L, step):
        k = min(step, L - s)
        a = buf[:k]
        a.copy_(src[s : s + k])
        torch.matmul(a, a.mT, out=out[s : s + k])
    return out.transpose(0, 1)


def _gram_root(G: torch.Tensor) -> torch.Tensor:
    """An R with RᵀR = G (G symmetric PSD, ``[..., r, r]``): diag(√λ) Wᵀ from G = W diag(λ) Wᵀ."""
    lam, W = torch.linalg.eigh(G)
    return lam.clamp_min(0).sqrt().unsqueeze(-1) * W.mT


def singular_values(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``[..., r]`` float64: all singular values of U Vᵀ, descending, for ``U: [..., n, r]``, ``V: [..., m, r]``.

    From the r×r Gram matrices alone: any R_U, R_V with R_Uᵀ R_U = UᵀU and R_Vᵀ R_V = VᵀV equal the QR
    factors' R up to an orthogonal factor on the left, so U Vᵀ = Q_U R_U R_Vᵀ Q_Vᵀ has the singular values
    of the core R_U R_Vᵀ. Batched work only: one matmul per factor and three r×r decompositions (batched
    Jacobi solvers on CUDA for r ≤ 32). A QR of the tall factors instead costs one LAPACK call per matrix
    on a CPU and, for more than 256 rows, one cuSOLVER call per matrix on a GPU (torch batches QR only
    below that): it was most of a folder scan's scoring time (bench/RESULTS.md, "Folder scoring throughput").
    In float64 the relative error of σⱼ stays near 1e-16·κ² (κ = σ₁/σⱼ of U or V; 1e-12 at κ = 10⁴), well
    below float32 QR's 1e-6; zero-padded rank columns give exact zeros, and a rank-deficient factor's zero
    singular value comes out near 1e-8·σ₁ (float64 QR: 1e-15·σ₁, float32 QR: 1e-7·σ₁)."""
    core = _gram_root(gram(U)) @ _gram_root(gram(V)).mT
    return torch.linalg.svdvals(core)


def _top(s: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` of ``s [..., r]``, zero-padded past r."""
    if s.shape[-1] >= k:
        return s[..., :k]
    return torch.nn.functional.pad(s, (0, k - s.shape[-1]))


def top_singular_values(U: torch.Tensor, V: torch.Tensor, k: int) -> torch.Tensor:
    """``[..., k]`` largest singular values of U Vᵀ (descending, `singular_values`), zero-padded past the
    rank, in U's dtype."""
    with torch.no_grad():
        return _top(singular_values(U, V), k).to(U.dtype)


def all_spectra(batch: FactorBatch) -> torch.Tensor:
    """``[B, L, r]`` float64 on the batch's device: every singular value of every module, in spec order
    (r the batch's largest rank, zero past each module's). Computed once per batch and kept in
    ``batch.cache``, so a model's spectral features and the checkpoint's domain score share one computation."""
    full = batch.cache.get(SPECTRA)
    if full is None or full.dtype != torch.float64:
        with torch.no_grad():
            per_group = [singular_values(g.U, g.V) for g in batch.groups]
            r = max(s.shape[-1] for s in per_group)
            full = batch.to_spec_order([_top(s, r) for s in per_group])
        batch.cache[SPECTRA] = full
    return full


def batch_spectra(batch: FactorBatch, k: int) -> torch.Tensor:
    """``[B, L, k]`` float64: the top ``k`` of `all_spectra` (zero past the rank)."""
    return _top(all_spectra(batch), k)


SUMMARIES = 3  # values per module from `spectral_summaries`
# ``log_spectra``: a magnitude x = σ / ref is read as log(x + LOG_FLOOR). The floor keeps zero-padded ranks and
# zero modules finite (log 1e-6 ≈ −13.8, far below any real σ / ref measured: on the Qwen v3 zoo log(σ / ref) spans
# −5.6 to 5.1) without bending the rest.
LOG_FLOOR = 1e-6


def log_magnitudes(x: torch.Tensor) -> torch.Tensor:
    """log(x + `LOG_FLOOR`) of non-negative magnitudes relative to a reference scale."""
    return torch.log(x + LOG_FLOOR)


def spectral_summaries(s: torch.Tensor, k: int) -> torch.Tensor:
    """``[..., 3]`` float64 from all singular values ``s [..., r]`` (descending) of a module: what the top ``k``
    leave out, √(Σ_{j>k} σⱼ²) (a magnitude: with the top k it gives ‖ΔW‖_F at any rank), and two scale-free
    shapes of the whole spectrum, ‖σ‖₁/‖σ‖₂ (√ of the effective rank) and ‖σ‖₂/σ₁ (√ of the stable rank);
    all 0 for a zero ΔW. Functions of singular values, so GL-invariant like them."""
    s = s.double()
    fro = s.pow(2).sum(-1).sqrt()
    tail = s[..., k:].pow(2).sum(-1).sqrt()
    nonzero = fro > 0
    safe = torch.where(nonzero, fro, torch.ones_like(fro))
    top = torch.where(nonzero, s[..., 0], torch.ones_like(fro))
    zero = torch.zeros_like(fro)
    return torch.stack([tail, torch.where(nonzero, s.sum(-1) / safe, zero), torch.where(nonzero, fro / top, zero)], -1)


def median_top(top: torch.Tensor) -> torch.Tensor:
    """``[L]`` float64: per module the median of ``top [N, L]`` (σ₁ of N adapters) over the adapters where
    it is non-zero, 1 where none is: the reference scale spectral features are divided by."""
    top = top.double()
    med = torch.where(top > 0, top, torch.full_like(top, float("nan"))).nanquantile(0.5, dim=0)
    return torch.where(med.isnan() | (med <= 0), torch.ones_like(med), med)


class SVDMLP(FeatureMLP):
    """Hyperparameters: ``k`` singular values per layer, head ``hidden``/``layers``/``dropout``, ``standardize``,
    ``log_spectra`` (read log(σ / ref) instead of σ, ref each layer's median σ₁ over the training adapters: on
    damage-driven labels, where a label changes past a size of the update, this took the Qwen v3 zoo's ARC-C
    from R² 0.88 to 0.93 at 1,004 LoRAs; bench/RESULTS.md, "Log spectra")."""

    arch = "mlp-svd"

    def __init__(
        self,
        spec: LayerSpec,
        out_dim: int,
        *,
        k: int = 8,
        hidden: int = 64,
        layers: int = 2,
        dropout: float = 0.0,
        standardize: bool = True,
        log_spectra: bool = False,
    ):
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"mlp-svd needs k >= 1, got {k!r}")
        hp = {"k": k, **mlp_hparams(hidden, layers, dropout, standardize)}
        if log_spectra:
            hp["log_spectra"] = True  # recorded only when on: cards without it read as before
        super().__init__(spec, out_dim, hp, len(spec) * k)
        self.k = k
        self.log_spectra = bool(log_spectra)
        if self.log_spectra:
            self.register_buffer("spec_ref", torch.ones(len(spec)))

    def features(self, batch: FactorBatch) -> torch.Tensor:
        self._check_batch(batch)
        s = batch_spectra(batch, self.k)
        if self.log_spectra:
            s = log_magnitudes(s / self.spec_ref.to(s).view(1, -1, 1))
        return s.to(batch.dtype).flatten(1)

    def _fit_inputs(self, adapters: Sequence[Adapter]) -> None:
        if self.log_spectra:  # ref first: the standardising statistics are taken of the log features
            with torch.no_grad():
                top = torch.cat([batch_spectra(self.collate(chunk), 1)[..., 0] for chunk in _chunks(adapters, 32)])
            self.spec_ref.copy_(median_top(top).to(self.spec_ref))
