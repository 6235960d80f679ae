"""``mlp-oalign``: align each layer's factors to a template by orthogonal Procrustes, then an MLP.

For layer i, Q = argmin over orthogonal Q of ‖U Q − T_U‖² + ‖V Q − T_V‖² is A Bᵀ where
A S Bᵀ = SVD(Uᵀ T_U + Vᵀ T_V) (an r×r SVD). (U Q, V Q) keeps ΔW (Q⁻ᵀ = Q) and is unchanged
when the input is (U O, V O) for any orthogonal O — but not under general GL(r).

Mixed ranks: every module is zero-padded to the model's ``rank`` R, template and input alike; nothing is
normalised, so zero columns give no NaN. A rank-r input (r < R) has zero rows r.. in M = Uᵀ T_U + Vᵀ T_V,
so the SVD's singular vectors for the zero singular values are arbitrary; but U Q = U_r Q[:r] needs only
the rows of Q the r columns reach, A[:r] Bᵀ = the polar factor of the top r rows of M, which is unique when
those rows have rank r: (U_r P, V_r P) with P the r×R partial isometry closest to the template. So padded
columns need no mask — as long as the template's rank in the module is at least the input's. A template of
a lower rank t < r would leave the part of U Q outside its t columns arbitrary; hence ``fit`` takes a
rank-R adapter as the template, or (no training adapter has rank R in every module) per module the
training factors of the largest rank.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..adapter import Adapter, Layer
from .batch import FactorBatch
from .common import pad_rank
from .mlp import DEFAULT_MAX_FEATURES, FactorMLP, require_rank
from .spec import LayerSpec


class OAlignMLP(FactorMLP):
    """Hyperparameters: ``rank`` (required), head ``hidden``/``layers``/``dropout``, ``standardize``, ``max_features``.

    Template factors are buffers ``template_u_<g>: [L_g, n, rank]``, ``template_v_<g>``; they start
    random and are set by ``fit(adapters)`` (the training adapter covering most modules among those of
    rank ``rank`` in every module; if there is none, per module the first of the largest-rank training
    factors) or ``set_template(adapter)``. Modules of smaller ranks are zero-padded to ``rank``.
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
        def width(a: Adapter) -> int:
            return sum(1 for name in a.layers if name in self.spec)

        fitting = [a for a in adapters if self.spec.fits(a)]
        usable = [a for a in fitting if set(a.ranks) == {self.rank}]
        if usable:
            self.set_template(max(usable, key=width))  # first of the widest
            return
        # ranks mixed within adapters, none of rank R everywhere: a template of lower rank than an input
        # leaves part of that input's alignment arbitrary (module docstring), so per module the first
        # training factors of the largest rank (at most R), in the order widest adapter first
        layers: dict[str, Layer] = {}
        for a in sorted(fitting, key=width, reverse=True):  # stable: ties keep the training order
            for name, layer in a.layers.items():
                if name in self.spec and layer.rank <= self.rank and layer.rank > (layers[name].rank if name in layers else 0):
                    layers[name] = layer
        if not layers:
            raise ValueError(f"{self.arch}: no training adapter has a module of rank 1 to {self.rank} to serve as template")
        self.set_template(Adapter(layers, "template", source="template"))

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
