"""The byte layout of one adapter in a shared-memory slot (torch-free: readers and scorer share it).

Per shape group of the checkpoint's spec, in spec order: U ``[L, n, r]`` then V ``[L, m, r]``
(r: the adapter's largest rank in the group; smaller ranks and absent modules zero padded), each
block starting at a multiple of 4 bytes. A group is stored as float32 with every scale folded in
(`packing.pack`), or as the file's own float16/bfloat16 bits, unscaled: the light reader copies
those without converting them, and the scorer converts them while it assembles the batch,
multiplying each layer by its scale ``√s`` in float32 — the very operations `lolscan.load` does,
so the batch holds the same bytes. Such groups' scales follow all blocks, float32 ``[L]`` each.
"""
from __future__ import annotations

from dataclasses import dataclass

ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}


@dataclass
class InSlot:
    """A reader's answer for factors it wrote into its shared-memory slot: true ranks per group, and
    for the light reader each group's storage dtype and whether the group carries its scales."""

    ranks: list[list[int]]
    dtypes: list[str] | None = None  # None: every group float32
    scaled: list[bool] | None = None  # None: no group carries scales

    def dtype(self, g: int) -> str:
        return "F32" if self.dtypes is None else self.dtypes[g]

    def has_scales(self, g: int) -> bool:
        return self.scaled is not None and self.scaled[g]


Block = tuple[int, tuple[int, ...], str]  # byte offset, shape, dtype name


def layout(shapes: list[tuple[int, int]], slot: InSlot) -> tuple[list[tuple[Block, Block, Block | None]], int]:
    """Per group (U block, V block, scales block or None) for groups of ``(n, m)`` ``shapes``; and the
    bytes used."""
    at = 0
    blocks = []
    for g, ((n, m), ks) in enumerate(zip(shapes, slot.ranks)):
        r = max(ks, default=0) or 1
        size = ITEMSIZE[slot.dtype(g)]
        u = (at, (len(ks), n, r), slot.dtype(g))
        at = _align(at + len(ks) * n * r * size)
        v = (at, (len(ks), m, r), slot.dtype(g))
        at = _align(at + len(ks) * m * r * size)
        blocks.append([u, v, None])
    for g, ks in enumerate(slot.ranks):
        if slot.has_scales(g):
            blocks[g][2] = (at, (len(ks),), "F32")
            at += 4 * len(ks)
    return [tuple(b) for b in blocks], at  # type: ignore[misc]


def _align(at: int) -> int:
    return (at + 3) & ~3
