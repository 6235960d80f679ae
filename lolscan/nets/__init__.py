"""Metanetworks that read LoRA factors (GL-net and baselines).

Public API (stable):

- `LayerShape(name, n, m)`, `LayerSpec` (ordered modules; `from_adapters`, `to_json`/`from_json`,
  `differences(adapter)`, `require_fits(adapter)` -> raises `IncompatibleAdapter`).
- `collate(adapters, spec, device=None, *, dtype=float32, check=True) -> FactorBatch`: layers of one
  (n, m) are stacked into `FactorGroup`s; ranks zero-padded (exact), untouched modules are zeros.
"""
from __future__ import annotations

from .batch import FactorBatch, FactorGroup, collate
from .spec import LayerShape, LayerSpec, ShapeGroup

__all__ = ["LayerShape", "LayerSpec", "ShapeGroup", "FactorBatch", "FactorGroup", "collate"]
