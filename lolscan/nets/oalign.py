"""``mlp-oalign``: align each layer's factors to a template by orthogonal Procrustes, then an MLP.

For layer i, Q = argmin over orthogonal Q of ‖U Q − T_U‖² + ‖V Q − T_V‖² is A Bᵀ where
A S Bᵀ = SVD(Uᵀ T_U + Vᵀ T_V) (an r×r SVD). (U Q, V Q) keeps ΔW (Q⁻ᵀ = Q) and is unchanged
when the input is (U O, V O) for any orthogonal O — but not under general GL(r).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..adapter import Adapter
from .batch import FactorBatch
from .common import pad_rank
from .mlp import DEFAULT_MAX_FEATURES, FactorMLP, require_rank
from .spec import LayerSpec


class OAlignMLP(FactorMLP):
    """Hyperparameters: ``rank`` (required), head ``hidden``/``layers``/``dropout``, ``standardize``, ``max_features``.

    Template factors are buffers ``template_u_<g>: [L_g, n, rank]``, ``template_v_<g>``; they start
    random and are set by ``fit(adapters)`` (the training adapter covering most modules) or
    ``set_template(adapter)``.
    """

    arch = "mlp-oalign"

    def __init__(
        self,
        spec: LayerSpec,
        out_dim: int,
        *,
        rank: int | None = None,
        hidden: int = 64,
        layers: int = 2,
        dropout: float = 0.0,
        standardize: bool = True,
        max_features: int = DEFAULT_MAX_FEATURES,
    ):
        super().__init__(spec, out_dim, rank=rank, hidden=hidden, layers=layers, dropout=dropout,
                         standardize=standardize, max_features=max_features)
        for gi, g in enumerate(spec.groups):
            L = len(g.indices)
            self.register_buffer(f"template_u_{gi}", torch.randn(L, g.n, rank))
            self.register_buffer(f"template_v_{gi}", torch.randn(L, g.m, rank))

    def templates(self, gi: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"template_u_{gi}"), getattr(self, f"template_v_{gi}")

    @torch.no_grad()
    def set_template(self, adapter: Adapter) -> None:
        """Use ``adapter``'s factors as the template (modules it does not touch: zeros)."""
        batch = self.collate(adapter)
        require_rank(self.arch, batch, self.rank)
        for gi, g in enumerate(batch.groups):
            tu, tv = self.templates(gi)
            tu.copy_(pad_rank(g.U[0], self.rank))
            tv.copy_(pad_rank(g.V[0], self.rank))

    def _fit_inputs(self, adapters: Sequence[Adapter]) -> None:
        usable = [a for a in adapters if set(a.ranks) == {self.rank} and self.spec.fits(a)]
        if not usable:
            raise ValueError(f"{self.arch}: no training adapter has rank {self.rank} in every module to serve as template")
        best = max(usable, key=lambda a: sum(1 for name in a.layers if name in self.spec))  # first of the widest
        self.set_template(best)

    def align(self, batch: FactorBatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per group the aligned ``(U Q, V Q)``, each ``[B, L_g, ·, rank]``."""
        require_rank(self.arch, batch, self.rank)
        out = []
        for gi, g in enumerate(batch.groups):
            U, V = pad_rank(g.U, self.rank), pad_rank(g.V, self.rank)
            tu, tv = self.templates(gi)
            M = torch.einsum("blnr,lns->blrs", U, tu.to(U.dtype)) + torch.einsum("blmr,lms->blrs", V, tv.to(V.dtype))
            A, _, Bh = torch.linalg.svd(M)
            Q = A @ Bh
            out.append((U @ Q, V @ Q))
        return out

    def features(self, batch: FactorBatch) -> torch.Tensor:
        self._check_batch(batch)
        parts = []
        for U, V in self.align(batch):
            parts += [U.flatten(1), V.flatten(1)]
        return torch.cat(parts, dim=1)
