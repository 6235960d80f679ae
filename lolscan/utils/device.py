"""`--device auto|cpu|cuda[:N]` → a torch.device: the one resolver that train, predict, eval and zoo use."""
from __future__ import annotations

from typing import Any

from ..errors import UsageError


def resolve_device(device: str) -> Any:
    """``auto`` is a GPU when there is one; asking for CUDA where there is none is a usage error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r}: expected auto, cpu or cuda") from None
