"""Several models of one architecture trained at different seeds, their raw outputs averaged.

`lolscan train --ensemble K` trains the settings it chose at K seeds and serves the mean of the members'
raw outputs (logits, z-scored regression values); temperatures and conformal intervals are then fitted on
these mean outputs, as for one model. Averaging K seeds' models smooths what one initialisation and batch
order got wrong, and an ensemble of GL-invariant members is GL-invariant. The checkpoint holds
``members.K.…`` tensors and its card says how many members there are (`lolscan.checkpoint`).

Members need not share fitted buffers (each was fitted and trained on its own), so each reads the raw
factors itself; only model-independent work (the singular values of every ΔW) is shared between them.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .batch import FactorBatch
from .common import MetaNet
from .pertarget import PerTargetNet


class EnsembleNet(MetaNet):
    """``forward(batch)`` = the mean of the members' outputs; members may be `PerTargetNet`s."""

    def __init__(self, members: Sequence[MetaNet]):
        if not members:
            raise ValueError("an EnsembleNet needs at least one member")
        first = members[0]
        super().__init__(first.spec, first.out_dim, first.hparams)
        for m in members:  # by arch, not type: one seed's model may be a PerTargetNet and another's not
            if (isinstance(m, EnsembleNet) or m.arch != first.arch or m.hparams != first.hparams
                    or m.out_dim != first.out_dim or m.spec != first.spec):
                raise ValueError("the members of an EnsembleNet must share one architecture, its hyperparameters, "
                                 "output width and layer spec")
        self.arch = first.arch
        self.members = nn.ModuleList(members)

    def forward(self, batch: FactorBatch) -> torch.Tensor:
        return self.member_outputs(batch).mean(0)

    def member_outputs(self, batch: FactorBatch) -> torch.Tensor:
        """``[members, B, out]``: each member's raw outputs on ``batch`` as it alone would give them (its own fresh
        cache; the singular values, the same for all, computed once); ``forward`` is their mean."""
        if not isinstance(batch, FactorBatch):
            raise TypeError("an EnsembleNet reads a FactorBatch: features prepared for one member are not another's")
        from .svd import SPECTRA

        shared = {SPECTRA: batch.cache[SPECTRA]} if SPECTRA in batch.cache else {}
        outs = []
        for m in self.members:
            own = FactorBatch(batch.spec, batch.groups, batch.sources, dict(shared))  # no member's cached features
            outs.append(m(own))
            if SPECTRA in own.cache and SPECTRA not in shared:  # raw singular values: the same for every member
                shared[SPECTRA] = own.cache[SPECTRA]
        if SPECTRA in shared and SPECTRA not in batch.cache:  # for the caller's domain score, as one model leaves it
            batch.cache[SPECTRA] = shared[SPECTRA]
        return torch.stack(outs)


def base_net(model: nn.Module) -> nn.Module:
    """The architecture's own module inside `EnsembleNet` / `PerTargetNet` wrappers (their first member,
    recursively): what decides how a batch is prepared (e.g. a baseline's feature size)."""
    while isinstance(model, (EnsembleNet, PerTargetNet)):
        model = model.members[0]
    return model
