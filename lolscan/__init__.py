"""lolscan: score LoRA adapters with GL-equivariant metanetworks."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import IncompatibleAdapter, InputError, LolscanError, UnsupportedFormat

if TYPE_CHECKING:
    from .adapter import Adapter, Layer

from ._version import __version__

__all__ = ["Adapter", "Layer", "load", "LolscanError", "InputError", "UnsupportedFormat", "IncompatibleAdapter", "__version__"]


def __getattr__(name: str) -> Any:
    """`Adapter` and `Layer` on first use: ``import lolscan`` does not import torch, so the light
    reader processes of `lolscan.scan.scoring` (`lolscan.scan.lightread`) start in a fraction of a second."""
    if name in ("Adapter", "Layer"):
        from . import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(target: str, *, allow_pickle: bool = False, **source_options) -> Adapter:
    """Read one LoRA (file, PEFT folder, or remote URI) into the canonical `Adapter`."""
    from .formats import load_adapter

    return load_adapter(target, allow_pickle=allow_pickle, **source_options)
