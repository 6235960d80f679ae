"""The architecture names, without torch: reading a card and building the CLI import only this."""
from __future__ import annotations

ARCHITECTURES: tuple[str, ...] = ("glnet", "mlp", "mlp-oalign", "mlp-svd", "mlp-dense")
# Architectures that read LoRA factors at one fixed rank (they take ``rank=``, the largest they read; smaller
# ranks are zero-padded to it; training passes the zoo's `max_rank(adapters)`).
FIXED_RANK_ARCHS: tuple[str, ...] = ("mlp", "mlp-oalign")
