"""``mlp-svd``: the top-k singular values of each ΔWᵢ = Uᵢ Vᵢᵀ, then an MLP.

Singular values come from the r×r core R_U R_Vᵀ of the QR factors (U = Q_U R_U, V = Q_V R_V),
so ΔW is never formed. GL-invariant, but blind to everything but the spectrum (e.g. a sign flip).
"""
from __future__ import annotations

import torch

from .batch import FactorBatch
from .common import FeatureMLP, mlp_hparams
from .spec import LayerSpec


def top_singular_values(U: torch.Tensor, V: torch.Tensor, k: int) -> torch.Tensor:
    """``[..., k]`` largest singular values of U Vᵀ (descending), zero-padded past the rank."""
    _, ru = torch.linalg.qr(U)
    _, rv = torch.linalg.qr(V)
    s = torch.linalg.svdvals(ru @ rv.transpose(-1, -2))
    if s.shape[-1] >= k:
        return s[..., :k]
    return torch.nn.functional.pad(s, (0, k - s.shape[-1]))


def median_top(top: torch.Tensor) -> torch.Tensor:
    """``[L]`` float64: per module the median of ``top [N, L]`` (σ₁ of N adapters) over the adapters where
    it is non-zero, 1 where none is: the reference scale spectral features are divided by."""
    top = top.double()
    med = torch.where(top > 0, top, torch.full_like(top, float("nan"))).nanquantile(0.5, dim=0)
    return torch.where(med.isnan() | (med <= 0), torch.ones_like(med), med)


class SVDMLP(FeatureMLP):
    """Hyperparameters: ``k`` singular values per layer, head ``hidden``/``layers``/``dropout``, ``standardize``."""

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
    ):
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"mlp-svd needs k >= 1, got {k!r}")
        hp = {"k": k, **mlp_hparams(hidden, layers, dropout, standardize)}
        super().__init__(spec, out_dim, hp, len(spec) * k)
        self.k = k

    def features(self, batch: FactorBatch) -> torch.Tensor:
        self._check_batch(batch)
        per_group = [top_singular_values(g.U, g.V, self.k) for g in batch.groups]
        return batch.to_spec_order(per_group).flatten(1)
