"""``mlp-dense``: an MLP on every ΔWᵢ = Uᵢ Vᵢᵀ, flattened. GL-invariant; only for small models."""
from __future__ import annotations

import torch

from .batch import FactorBatch
from .common import FeatureMLP, mlp_hparams
from .spec import LayerSpec

# The head's first layer has max_entries × hidden weights: 8M entries × 64 = 512M parameters.
DEFAULT_MAX_ENTRIES = 8_000_000


class DenseMLP(FeatureMLP):
    """Hyperparameters: ``max_entries`` (limit on Σ n·m), head ``hidden``/``layers``/``dropout``, ``standardize``."""

    arch = "mlp-dense"

    def __init__(
        self,
        spec: LayerSpec,
        out_dim: int,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        hidden: int = 64,
        layers: int = 2,
        dropout: float = 0.0,
        standardize: bool = True,
    ):
        entries = spec.total_entries
        if entries > max_entries:
            raise ValueError(
                f"mlp-dense would read {entries:,} ΔW entries per adapter ({len(spec)} modules; "
                f"limit max_entries={max_entries:,}); use glnet or mlp-svd for a model this large"
            )
        hp = {"max_entries": int(max_entries), **mlp_hparams(hidden, layers, dropout, standardize)}
        super().__init__(spec, out_dim, hp, entries)

    def features(self, batch: FactorBatch) -> torch.Tensor:
        self._check_batch(batch)
        return torch.cat([(g.U @ g.V.transpose(-1, -2)).flatten(1) for g in batch.groups], dim=1)
