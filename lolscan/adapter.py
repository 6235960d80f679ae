"""The canonical form every LoRA format is read into.

A `Layer` holds exact factors with ΔW = U @ V.T (all scales folded in), where ΔW is the
update to the module's weight in PyTorch's ``[out, in]`` orientation; conv kernels are
viewed as ``out × (in·kh·kw)`` and embeddings as ``num_embeddings × dim`` (the way
their weights are stored).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

LAYER_KINDS = ("linear", "conv", "embedding")


@dataclass
class Layer:
    """One adapted module: ΔW = U @ V.T exactly."""

    U: torch.Tensor  # n × r, float32
    V: torch.Tensor  # m × r, float32
    shape: tuple[int, ...]  # the base weight's shape as PyTorch stores it
    kind: str = "linear"
    algo: str = "lora"  # lora | locon-tucker | loha | lokr
    magnitude: torch.Tensor | None = None  # DoRA magnitude vector, if any
    dora_axis: str | None = None  # "out" (per output row) or "in" (per input column)
    alpha: float | None = None
    scale: float = 1.0  # the scale that was folded into U and V
    source_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.U.ndim != 2 or self.V.ndim != 2 or self.U.shape[1] != self.V.shape[1]:
            raise ValueError(f"factor shapes do not pair: U {tuple(self.U.shape)}, V {tuple(self.V.shape)}")

    @property
    def n(self) -> int:
        return int(self.U.shape[0])

    @property
    def m(self) -> int:
        return int(self.V.shape[0])

    @property
    def rank(self) -> int:
        return int(self.U.shape[1])

    @property
    def exact(self) -> bool:
        """False for DoRA: its full update needs the base weight, only the low-rank part is known."""
        return self.magnitude is None

    def delta(self) -> torch.Tensor:
        """The dense n × m update. For tests and small layers only."""
        return self.U @ self.V.T

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The adapted weight for base `weight` (its stored shape), float32: W + ΔW, or for DoRA
        m ⊙ (W + ΔW) / ‖W + ΔW‖ with the norm per output row ("out", peft) or per input column ("in")."""
        w = weight.float().reshape(self.n, -1) + self.delta()
        if self.magnitude is not None:
            m = self.magnitude.float()
            if self.dora_axis == "in":
                w = w * (m / torch.linalg.norm(w, dim=0)).view(1, -1)
            else:
                w = w * (m / torch.linalg.norm(w, dim=1)).view(-1, 1)
        return w.reshape(weight.shape)

    def singular_values(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Singular values of U Vᵀ from the r × r core of the QR factors (never forms ΔW), computed in float64
        and returned as ``dtype``."""
        _, ru = torch.linalg.qr(self.U.double())
        _, rv = torch.linalg.qr(self.V.double())
        return torch.linalg.svdvals(ru @ rv.T).to(dtype)

    def frobenius_norm(self) -> float:
        # ‖U Vᵀ‖_F² = trace((UᵀU)(VᵀV)): r × r work only.
        u, v = self.U.double(), self.V.double()
        return math.sqrt(max(float(torch.sum((u.T @ u) * (v.T @ v))), 0.0))


@dataclass
class Adapter(Mapping[str, Layer]):
    """An ordered mapping of canonical module name → `Layer`, plus what the file said about itself."""

    layers: dict[str, Layer]
    format: str
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    extra_tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)  # non-LoRA tensors, reported
    warnings: list[str] = field(default_factory=list)
    dtype: str = ""
    nonfinite: list[str] = field(default_factory=list)  # modules whose factors hold NaN/Inf values

    def __getitem__(self, name: str) -> Layer:
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def ranks(self) -> list[int]:
        return [layer.rank for layer in self.layers.values()]

    @property
    def mixed_rank(self) -> bool:
        return len(set(self.ranks)) > 1

    def __repr__(self) -> str:
        ranks = sorted(set(self.ranks))
        return f"Adapter(format={self.format!r}, layers={len(self)}, ranks={ranks}, source={self.source!r})"
