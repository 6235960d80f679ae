"""Reading every LoRA file format into the canonical `Adapter` (entry point: `load_adapter`).

The package itself imports nothing heavy: `load_adapter`, `load_path`, `from_tensor_file` and
`FORMATS` come from `.loader` on first use, so the torch-free helpers (`grouping`, `names`,
`peft_config`, `scheme`) can be imported by the light reader processes without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_LOADER = ("FORMATS", "from_tensor_file", "load_path", "load_adapter")
_SUBMODULES = ("build", "cloneofsimo", "common", "diffusers", "grouping", "kohya", "loader", "lycoris", "names", "peft",
               "peft_config", "plain", "scheme", "stheader", "tensorfile")

__all__ = list(_LOADER)


def __getattr__(name: str) -> Any:
    if name in _LOADER:
        return getattr(importlib.import_module(".loader", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
