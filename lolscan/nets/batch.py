"""Pack adapters into per-shape tensors so a metanetwork runs batched matmuls over layer groups.

For each `ShapeGroup` (spec layers with one ``(n, m)``) a `FactorGroup` holds
``U: [B, L_g, n, r_g]`` and ``V: [B, L_g, m, r_g]`` where ``r_g`` is the largest rank any adapter
of the batch has in that group. Smaller ranks are zero-padded in the rank columns, which leaves
U Vᵀ unchanged exactly; a spec module an adapter does not touch gets all-zero factors (ΔW = 0).
``ranks`` keeps each layer's true rank (0 = not adapted) for models that need a fixed rank.

Memory layout: U and V are permuted views of ``[L_g, n, B, r_g]`` storage, so the left
multiplication by per-layer maps (``einsum("ldn,blnr->bldr")``) is one bmm over L_g without a
transposing copy of the input. Shapes and indexing are unaffected.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

import torch

from ..adapter import Adapter
from .spec import LayerSpec


@dataclass
class FactorGroup:
    """All spec layers of one shape, for every adapter in the batch."""

    n: int
    m: int
    indices: tuple[int, ...]  # spec positions of the L_g layers
    U: torch.Tensor  # [B, L_g, n, r_g]
    V: torch.Tensor  # [B, L_g, m, r_g]
    ranks: torch.Tensor  # [B, L_g] int64 on CPU; true rank per adapter and layer, 0 = absent

    @property
    def rank(self) -> int:
        return int(self.U.shape[-1])

    @property
    def num_layers(self) -> int:
        return len(self.indices)


@dataclass
class FactorBatch:
    """A batch of adapters laid out for `LayerSpec` ``spec``; see the module docstring."""

    spec: LayerSpec
    groups: list[FactorGroup]
    sources: list[str]
    # Per-adapter tensors ``[B, ...]`` derived from the factors once (e.g. GL-net's spectral
    # invariants during training); `select` slices them along with the factors, `to` moves them.
    cache: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return len(self.sources)

    def __len__(self) -> int:
        return self.batch_size

    @property
    def num_layers(self) -> int:
        return len(self.spec)

    @property
    def device(self) -> torch.device:
        return self.groups[0].U.device

    @property
    def dtype(self) -> torch.dtype:
        return self.groups[0].U.dtype

    def ranks(self) -> torch.Tensor:
        """``[B, L]`` true ranks in spec order (0 = module not adapted)."""
        return self.to_spec_order([g.ranks for g in self.groups])

    def rank_set(self) -> set[int]:
        """The distinct ranks of the adapted modules in this batch."""
        r = self.ranks()
        return {int(x) for x in r[r > 0].unique()}

    def to_spec_order(self, per_group: Sequence[torch.Tensor]) -> torch.Tensor:
        """Turn one ``[B, L_g, ...]`` tensor per group into ``[B, L, ...]`` in spec order."""
        if len(per_group) != len(self.groups):
            raise ValueError(f"expected {len(self.groups)} group tensors, got {len(per_group)}")
        cat = torch.cat(list(per_group), dim=1)
        if len(self.groups) == 1:
            return cat  # one group: its indices are 0..L-1 already
        return cat.index_select(1, index_tensor(self.spec.group_inverse, cat.device))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> FactorBatch:
        # Tensor.to keeps the strides (preserve_format), so the batch-inner layout survives.
        groups = [replace(g, U=g.U.to(device=device, dtype=dtype), V=g.V.to(device=device, dtype=dtype)) for g in self.groups]
        cache = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in self.cache.items()}
        return FactorBatch(self.spec, groups, list(self.sources), cache)

    def batch_outer(self) -> FactorBatch:
        """The same batch with each adapter's factors contiguous (storage ``[B, L, n, r]``), for drawing many
        random minibatches: `select` then copies whole adapters instead of gathering along collate's
        batch-inner axis. One copy of the factors; the values are unchanged."""
        groups = [replace(g, U=g.U.contiguous(), V=g.V.contiguous()) for g in self.groups]
        return FactorBatch(self.spec, groups, list(self.sources), dict(self.cache))

    def select(self, rows: Sequence[int] | slice) -> FactorBatch:
        """A sub-batch (e.g. a minibatch for training); tensors are views/gathers, no re-collation."""
        if isinstance(rows, slice):
            idx = list(range(self.batch_size))[rows]
        else:
            idx = [int(i) for i in rows]
        if idx and idx == list(range(idx[0], idx[0] + len(idx))):  # a range: views, whatever the layout
            start, k = idx[0], len(idx)
            groups = [replace(g, U=g.U.narrow(0, start, k), V=g.V.narrow(0, start, k), ranks=g.ranks.narrow(0, start, k))
                      for g in self.groups]
            cache = {key: v.narrow(0, start, k) for key, v in self.cache.items()}
            return FactorBatch(self.spec, groups, list(self.sources[start : start + k]), cache)
        t = torch.as_tensor(idx, dtype=torch.long)
        groups = []
        for g in self.groups:
            td = t.to(g.U.device)
            groups.append(replace(g, U=_take_rows(g.U, td), V=_take_rows(g.V, td), ranks=g.ranks.index_select(0, t)))
        cache = {k: v.index_select(0, t.to(v.device)) for k, v in self.cache.items()}
        return FactorBatch(self.spec, groups, [self.sources[i] for i in idx], cache)


@lru_cache(maxsize=512)
def index_tensor(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A cached int64 tensor of ``values`` on ``device`` (avoids a host->device copy per forward). Do not modify."""
    return torch.as_tensor(values, dtype=torch.long, device=device)


def _take_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t.index_select(0, idx)``, keeping the layout: batch-outer storage (`FactorBatch.batch_outer`) gathers
    whole adapters; collate's batch-inner storage gathers along its inner axis (on a CPU about 6× slower for
    a minibatch of SmolLM2-shaped adapters, bench/RESULTS.md)."""
    if t.is_contiguous():
        return t.index_select(0, idx)
    return t.permute(1, 2, 0, 3).index_select(2, idx).permute(2, 0, 1, 3)


def collate(
    adapters: Adapter | Iterable[Adapter],
    spec: LayerSpec,
    device: torch.device | str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    check: bool = True,
) -> FactorBatch:
    """Pack adapters for ``spec``. With ``check`` every adapter must fit (`LayerSpec.require_fits`)."""
    batch = [adapters] if isinstance(adapters, Adapter) else list(adapters)
    if not batch:
        raise ValueError("collate needs at least one adapter")
    if check:
        for adapter in batch:
            spec.require_fits(adapter)
    target = torch.device(device) if device is not None else torch.device("cpu")
    B = len(batch)
    groups: list[FactorGroup] = []
    for sg in spec.groups:
        names = [spec[i].name for i in sg.indices]
        rows = [[adapter.layers.get(name) for name in names] for adapter in batch]
        r = max((layer.rank for row in rows for layer in row if layer is not None), default=0)
        r = max(r, 1)  # keep a (zero) rank column even when no adapter touches this group
        L = len(names)
        # Storage [L, n, B, r]: layer j of every adapter is one contiguous [n, B, r] block.
        U_store = torch.empty((L, sg.n, B, r), dtype=dtype)
        V_store = torch.empty((L, sg.m, B, r), dtype=dtype)
        ranks = torch.zeros((B, L), dtype=torch.long)
        for j in range(L):
            column = [row[j] for row in rows]
            if all(layer is not None and layer.rank == r for layer in column):
                # common case: no padding, one stacking copy per layer
                torch.stack([layer.U.to(dtype) for layer in column], dim=1, out=U_store[j])
                torch.stack([layer.V.to(dtype) for layer in column], dim=1, out=V_store[j])
                ranks[:, j] = r
                continue
            U_store[j].zero_()
            V_store[j].zero_()
            for b, layer in enumerate(column):
                if layer is None or layer.rank == 0:
                    continue
                k = layer.rank
                U_store[j, :, b, :k].copy_(layer.U)
                V_store[j, :, b, :k].copy_(layer.V)
                ranks[b, j] = k
        U = U_store.permute(2, 0, 1, 3)
        V = V_store.permute(2, 0, 1, 3)
        if target.type != "cpu":  # packed on the host, one copy per group (strides kept)
            U = U.to(target)
            V = V.to(target)
        groups.append(FactorGroup(sg.n, sg.m, sg.indices, U, V, ranks))
    return FactorBatch(spec, groups, [adapter.source for adapter in batch])
