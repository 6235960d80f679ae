"""Packing adapters for a checkpoint's layer spec, and stacking packed adapters into batches.

`pack` lays one adapter out per shape group in one flat float32 buffer (a reader's
shared-memory slot, or a new one); `slot_views` reads a slot in the layout of `lolscan.scan.slots`
(float32 groups, or float16/bfloat16 groups with their scales); `stack` copies packed adapters into
the `FactorBatch` that `lolscan.nets.collate` would build, with its memory layout, on the scoring
device, converting and scaling 16-bit groups on the way.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..adapter import Adapter
from .slots import InSlot
from .slots import layout as slot_layout

# One adapter laid out for the checkpoint's spec: per shape group (U [L_g, n, r], V [L_g, m, r],
# true ranks [L_g][, per-layer scales [L_g] of 16-bit unscaled U and V]); r is this adapter's
# largest rank in the group. Stacking these is `collate`.
Packed = list[tuple[Any, ...]]
_TORCH = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


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


def slot_views(slot: torch.Tensor, spec: Any, written: InSlot | list[list[int]], device: torch.device | None = None) -> Packed:
    """The `Packed` adapter a reader wrote into ``slot`` (`InSlot`; a list of true ranks per group
    for `pack`'s float32 layout). With an accelerator ``device`` the used part of the slot is copied
    there first, in one transfer."""
    if not isinstance(written, InSlot):
        written = InSlot(written)
    blocks, used = slot_layout([(g.n, g.m) for g in spec.groups], written)
    raw = slot.view(torch.uint8)
    flat = raw[:used].to(device, non_blocking=True) if device is not None and device.type != "cpu" else raw
    out: Packed = []
    for (u, v, sc), ks in zip(blocks, written.ranks):
        group = (_view(flat, u), _view(flat, v), torch.tensor(ks, dtype=torch.long))
        out.append(group if sc is None else (*group, _view(flat, sc)))
    return out


def _view(flat: torch.Tensor, block: tuple[int, tuple[int, ...], str]) -> torch.Tensor:
    at, shape, dtype = block
    t = _TORCH[dtype]
    return flat[at : at + math.prod(shape) * t.itemsize].view(t).view(shape)


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
    from ..nets import FactorBatch, FactorGroup

    B = len(packs)
    groups = []
    for gi, g in enumerate(spec.groups):
        parts = [[torch.as_tensor(x) for x in p[gi]] for p in packs]
        r = max(part[0].shape[-1] for part in parts)
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
            for b, (part, k) in enumerate(zip(parts, ks)):
                src = part[j]
                if src.dtype != torch.float32 and src.device.type == "cpu":  # 16-bit: widen contiguously first
                    tmp = buffers.get(("wide", j), tuple(src.shape), torch.float32, src.device) if buffers else None
                    src = _widen(src, part[3] if len(part) > 3 else None, tmp)
                elif len(part) > 3:
                    _scaled(src, part[3], dst[:, :, b, :k])
                    continue
                dst[:, :, b, :k].copy_(src, non_blocking=True)
        ranks = torch.stack([part[2] for part in parts])
        groups.append(FactorGroup(g.n, g.m, g.indices, U.permute(2, 0, 1, 3), V.permute(2, 0, 1, 3), ranks))
    return FactorBatch(spec, groups, list(sources))


def _scaled(src: torch.Tensor, scale: torch.Tensor, dst: torch.Tensor) -> None:
    """``dst`` = float32(src) · scale[layer] (float32 arithmetic, one rounding), in ``dst``'s dtype:
    16-bit factors widened and multiplied by their layer's scale as `lolscan.load` does."""
    if dst.dtype == torch.float32:
        torch.mul(src, scale.view(-1, 1, 1), out=dst)
    else:
        dst.copy_(src.float() * scale.view(-1, 1, 1))


def _widen(src: torch.Tensor, scale: torch.Tensor | None, out: torch.Tensor | None) -> torch.Tensor:
    """float32(src) (· scale[layer]) into a contiguous ``out``: on the CPU a widening copy into a
    strided destination takes a slow element-wise path, a contiguous one is vectorised."""
    out = torch.empty(src.shape, dtype=torch.float32) if out is None else out
    if scale is None:
        return out.copy_(src)
    return torch.mul(src, scale.view(-1, 1, 1), out=out)
