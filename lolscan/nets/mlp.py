"""``mlp``: an MLP on the raw flattened factors. Not gauge-invariant; accepts one fixed rank only."""
from __future__ import annotations

import torch

from .batch import FactorBatch
from .common import FeatureMLP, mlp_hparams, pad_rank
from .spec import LayerSpec

DEFAULT_MAX_FEATURES = 8_000_000


def require_rank(arch: str, batch: FactorBatch, rank: int) -> None:
    """ValueError naming the first adapter whose adapted modules are not all of rank ``rank``."""
    ranks = batch.ranks()
    for b in range(batch.batch_size):
        row = ranks[b]
        found = {int(x) for x in row[row > 0].unique()}
        if found - {rank}:
            who = batch.sources[b] or f"adapter #{b}"
            raise ValueError(f"{arch} needs rank {rank} in every module; {who} has ranks {sorted(found)}")


def flat_factors(batch: FactorBatch, rank: int) -> torch.Tensor:
    """``[B, Σ (n+m)·rank]``: each group's U then V, padded to ``rank``, groups in spec-group order."""
    parts = []
    for g in batch.groups:
        parts.append(pad_rank(g.U, rank).flatten(1))
        parts.append(pad_rank(g.V, rank).flatten(1))
    return torch.cat(parts, dim=1)


class FactorMLP(FeatureMLP):
    """Hyperparameters: ``rank`` (required), head ``hidden``/``layers``/``dropout``, ``standardize``, ``max_features``."""

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
            raise ValueError(f"{self.arch} needs rank=<int>: the one LoRA rank it accepts (got {rank!r})")
        hp = {"rank": rank, **mlp_hparams(hidden, layers, dropout, standardize), "max_features": int(max_features)}
        feature_dim = sum((s.n + s.m) * rank for s in spec)
        super().__init__(spec, out_dim, hp, feature_dim)
        self.rank = rank

    def features(self, batch: FactorBatch) -> torch.Tensor:
        self._check_batch(batch)
        require_rank(self.arch, batch, self.rank)
        return flat_factors(batch, self.rank)
