"""Packing adapters for a checkpoint's layer spec, and stacking packed adapters into batches.

`pack` lays one adapter out per shape group in one flat float32 buffer (a reader's
shared-memory slot, or a new one); `stack` copies packed adapters into the `FactorBatch` that
`lolscan.nets.collate` would build, with its memory layout, on the scoring device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .adapter import Adapter

# One adapter laid out for the checkpoint's spec: per shape group (U [L_g, n, r], V [L_g, m, r],
# true ranks [L_g]); r is this adapter's largest rank in the group. Stacking these is `collate`.
Packed = list[tuple[Any, Any, Any]]


@dataclass
class InSlot:
    """A reader's answer for factors it packed into its shared-memory slot: true ranks per group."""

    ranks: list[list[int]]


def pack(adapter: Adapter, spec: Any, out: torch.Tensor | None = None) -> Packed | None:
    """Lay one adapter out per shape group (zero rank padding and zero absent modules, as `collate`),
    in one flat float32 buffer: ``out`` when given (None if the adapter does not fit it), else a new one."""
    layout = []
    total = 0
    for g in spec.groups:
        layers = [adapter.layers.get(spec[i].name) for i in g.indices]
        r = max((layer.rank for layer in layers if layer is not None), default=0) or 1
        layout.append((g, layers, r))
        total += len(layers) * (g.n + g.m) * r
    if out is None:
        out = torch.empty(total)
    elif out.numel() < total:
        return None
    packed: Packed = []
    at = 0
    for g, layers, r in layout:
        L = len(layers)
        U = out[at : at + L * g.n * r].view(L, g.n, r)
        at += L * g.n * r
        V = out[at : at + L * g.m * r].view(L, g.m, r)
        at += L * g.m * r
        if all(layer is not None and layer.rank == r and layer.U.dtype == layer.V.dtype == torch.float32 for layer in layers):
            torch.stack([layer.U for layer in layers], out=U)  # the common case: one op each
            torch.stack([layer.V for layer in layers], out=V)
            packed.append((U, V, torch.full((L,), r, dtype=torch.long)))
            continue
        U.zero_()
        V.zero_()
        ranks = torch.zeros(L, dtype=torch.long)
        for j, layer in enumerate(layers):
            if layer is not None and layer.rank:
                U[j, :, : layer.rank] = layer.U
                V[j, :, : layer.rank] = layer.V
                ranks[j] = layer.rank
        packed.append((U, V, ranks))
    return packed


def slot_views(slot: torch.Tensor, spec: Any, ranks: list[list[int]], device: torch.device | None = None) -> Packed:
    """The `Packed` adapter that `pack` wrote into ``slot``, from its true ranks per group. With an
    accelerator ``device`` the used part of the slot is copied there first, in one transfer."""
    shapes = []
    for g, k in zip(spec.groups, ranks):
        r = max(k, default=0) or 1
        shapes += [(len(g.indices), g.n, r), (len(g.indices), g.m, r)]
    used = sum(math.prod(s) for s in shapes)
    flat = slot[:used].to(device, non_blocking=True) if device is not None and device.type != "cpu" else slot
    parts = torch.split(flat[:used], [math.prod(s) for s in shapes])
    views = [t.view(s) for t, s in zip(parts, shapes)]
    return [(views[2 * i], views[2 * i + 1], torch.tensor(k, dtype=torch.long)) for i, k in enumerate(ranks)]


class Buffers:
    """Batch tensors kept from one batch to the next (no fresh page faults for every batch)."""

    def __init__(self) -> None:
        self._flat: dict[Any, torch.Tensor] = {}

    def get(self, key: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        n = math.prod(shape)
        t = self._flat.get(key)
        if t is None or t.numel() < n or t.dtype != dtype or t.device != device:
            t = self._flat[key] = torch.empty(n, dtype=dtype, device=device)
        return t[:n].view(shape)


def stack(packs: list[Packed], spec: Any, sources: list[str], device: torch.device, dtype: torch.dtype = torch.float32,
          buffers: Buffers | None = None) -> Any:
    """Packed adapters -> the `FactorBatch` that `lolscan.nets.collate` builds from them, with
    collate's memory layout (``[L_g, n, B, r]`` storage). Host factors are copied straight into
    place on ``device`` (asynchronously from pinned memory) and converted to ``dtype`` there."""
    from .nets import FactorBatch, FactorGroup

    B = len(packs)
    groups = []
    for gi, g in enumerate(spec.groups):
        parts = [[torch.as_tensor(x) for x in p[gi]] for p in packs]
        r = max(u.shape[-1] for u, _, _ in parts)
        L = len(g.indices)
        if buffers is None:
            U = torch.empty((L, g.n, B, r), dtype=dtype, device=device)
            V = torch.empty((L, g.m, B, r), dtype=dtype, device=device)
        else:
            U = buffers.get((gi, "U"), (L, g.n, B, r), dtype, device)
            V = buffers.get((gi, "V"), (L, g.m, B, r), dtype, device)
        for j, dst in ((0, U), (1, V)):
            ks = [p[j].shape[-1] for p in parts]
            if min(ks) < r:  # zero the rank columns some adapter pads, once for the whole batch
                dst[..., min(ks) :].zero_()
            for b, (src, k) in enumerate(zip((p[j] for p in parts), ks)):
                dst[:, :, b, :k].copy_(src, non_blocking=True)
        ranks = torch.stack([k for _, _, k in parts])
        groups.append(FactorGroup(g.n, g.m, g.indices, U.permute(2, 0, 1, 3), V.permute(2, 0, 1, 3), ranks))
    return FactorBatch(spec, groups, list(sources))
