"""lolscan: score LoRA adapters with GL-equivariant metanetworks."""
from __future__ import annotations

from .adapter import Adapter, Layer
from .errors import IncompatibleAdapter, InputError, LolscanError, UnsupportedFormat

__version__ = "0.1.0"

__all__ = ["Adapter", "Layer", "load", "LolscanError", "InputError", "UnsupportedFormat", "IncompatibleAdapter", "__version__"]


def load(target: str, *, allow_pickle: bool = False, **source_options) -> Adapter:
    """Read one LoRA (file, PEFT folder, or remote URI) into the canonical `Adapter`."""
    from .formats import load_adapter

    return load_adapter(target, allow_pickle=allow_pickle, **source_options)
