"""The architecture names, without torch: reading a card and building the CLI import only this."""
from __future__ import annotations

ARCHITECTURES: tuple[str, ...] = ("glnet", "mlp", "mlp-oalign", "mlp-svd", "mlp-dense")
# Architectures that read one fixed LoRA rank (they take ``rank=``; see `common_rank(adapters)`).
FIXED_RANK_ARCHS: tuple[str, ...] = ("mlp", "mlp-oalign")
