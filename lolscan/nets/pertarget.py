"""One architecture's weights at several training steps, each serving some targets' output columns.

Training several targets together, each target's validation loss may bottom out at its own step (one
overfits at step 50, another still improves at 600). `lolscan.training` keeps the weights at every
target's own best step and, where those steps differ, serves each target's columns from its own
weights through this module: the members are copies of one trained model (same architecture,
hyperparameters and fitted buffers; only the learned parameters differ), so the checkpoint holds
``members.K.…`` tensors and its card says which member serves which target (`lolscan.checkpoint`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .batch import FactorBatch
from .common import FeatureMLP, MetaNet


class PerTargetNet(MetaNet):
    """``forward(batch)[:, j]`` is member ``column_member[j]``'s output column j."""

    def __init__(self, members: Sequence[MetaNet], column_member: Sequence[int]):
        first = members[0]
        super().__init__(first.spec, first.out_dim, first.hparams)
        if len(column_member) != first.out_dim or not all(0 <= k < len(members) for k in column_member):
            raise ValueError(f"column_member needs {first.out_dim} member indices below {len(members)}")
        if any(type(m) is not type(first) or m.hparams != first.hparams for m in members):
            raise ValueError("the members of a PerTargetNet must share one architecture and its hyperparameters")
        self.arch = first.arch
        self.members = nn.ModuleList(members)
        self.register_buffer("column_member", torch.as_tensor(list(column_member), dtype=torch.long), persistent=False)

    def shared_inputs(self, batch: FactorBatch) -> object:
        """What every member reads, computed once: a baseline's fixed features, GL-net's spectral
        invariants (they depend on the fitted buffers only, which the members share)."""
        first = self.members[0]
        if not isinstance(batch, FactorBatch) or batch.cache:
            return batch  # already prepared (training's batches) or features
        if isinstance(first, FeatureMLP):
            return first.extract(batch)
        if hasattr(first, "cache_features"):
            return first.cache_features(FactorBatch(batch.spec, batch.groups, batch.sources, dict(batch.cache)))
        return batch

    def forward(self, batch: FactorBatch) -> torch.Tensor:
        batch = self.shared_inputs(batch)
        outs = torch.stack([m(batch) for m in self.members], dim=-1)  # [B, out_dim, members]
        cols = torch.arange(self.out_dim, device=outs.device)
        return outs[:, cols, self.column_member.to(outs.device)]
