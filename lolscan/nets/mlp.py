"""``mlp``: an MLP on the raw flattened factors. Not gauge-invariant. Reads modules of rank up to its
``rank``, each zero-padded to ``rank`` (the same ΔW); a module of a larger rank is refused."""
from __future__ import annotations

import torch

from .batch import FactorBatch
from .common import FeatureMLP, mlp_hparams, pad_rank
from .spec import LayerSpec

DEFAULT_MAX_FEATURES = 8_000_000


def require_rank(arch: str, batch: FactorBatch, rank: int) -> None:
    """ValueError naming the first adapter with a module of rank above ``rank`` (smaller ranks are
    zero-padded to ``rank``; absent modules are all-zero)."""
    ranks = batch.ranks()
    over = (ranks > rank).any(dim=1)
    if bool(over.any()):
        b = int(over.nonzero()[0, 0])
        row = ranks[b]
        found = sorted({int(x) for x in row[row > 0].unique()})
        who = batch.sources[b] or f"adapter #{b}"
        raise ValueError(f"{arch} reads modules of rank up to {rank} (smaller ranks are zero-padded); {who} has ranks {found}")


def flat_factors(batch: FactorBatch, rank: int) -> torch.Tensor:
    """``[B, Σ (n+m)·rank]``: each group's U then V, padded to ``rank``, groups in spec-group order."""
    parts = []
    for g in batch.groups:
        parts.append(pad_rank(g.U, rank).flatten(1))
        parts.append(pad_rank(g.V, rank).flatten(1))
    return torch.cat(parts, dim=1)


class FactorMLP(FeatureMLP):
    """Hyperparameters: ``rank`` (required: the largest rank it reads; training sets the zoo's largest,
    `max_rank`), head ``hidden``/``layers``/``dropout``, ``standardize``, ``max_features``."""

    arch = "mlp"

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
        if rank is None or isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"{self.arch} needs rank=<int>: the largest LoRA rank it reads, smaller ones zero-padded (got {rank!r})")
        hp = {"rank": rank, **mlp_hparams(hidden, layers, dropout, standardize), "max_features": int(max_features)}
        feature_dim = sum((s.n + s.m) * rank for s in spec)
        super().__init__(spec, out_dim, hp, feature_dim)
        self.rank = rank

    def features(self, batch: FactorBatch) -> torch.Tensor:
        self._check_batch(batch)
        require_rank(self.arch, batch, self.rank)
        return flat_factors(batch, self.rank)
