"""`lolscan models NAME --self-test`: check that a checkpoint reads ΔW and nothing else.

On synthetic adapters that fit the checkpoint's layer spec (each module a random rank-r update at
the scale of its training adapters, when the card records it), in float64:

- gauge: (Uᵢ Rᵢ, Vᵢ Rᵢ⁻ᵀ) with a random Rᵢ ∈ GL(r) per module gives the same outputs;
- padding: zero rank columns appended to every module (the same ΔW at a larger rank) give the same outputs;
- sensitivity: a changed ΔW (every update doubled, or moved along a random direction) changes them.

Outputs are compared as ‖a − b‖ / ‖a‖ over the batch. Architectures that read raw factors (`mlp`)
or align them only up to rotations (`mlp-oalign`) are not GL-invariant by design: their gauge and
padding rows are reported but not judged.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..adapter import Adapter, Layer

TOLERANCE = 1e-5  # relative: the invariances must hold to this
SENSITIVE = 1e-4  # relative: a doubled update must move the outputs at least this much
NOT_INVARIANT = ("mlp", "mlp-oalign")


@dataclass
class Check:
    name: str
    what: str
    value: float  # relative change of the outputs
    passed: bool | None  # None: reported, not judged (the architecture does not promise it)

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.name, "what": self.what, "relative_change": self.value, "passed": self.passed}


def _adapters(ckpt: Any, count: int, rank: int, g: torch.Generator) -> list[Adapter]:
    dom = ckpt.domain
    ref = dom.ref.double() if dom is not None else None
    out = []
    for i in range(count):
        layers = {}
        for j, s in enumerate(ckpt.spec):
            U = torch.randn(s.n, rank, generator=g, dtype=torch.float64) / math.sqrt(s.n)
            V = torch.randn(s.m, rank, generator=g, dtype=torch.float64) / math.sqrt(s.m)
            scale = float(ref[j]) if ref is not None and float(ref[j]) > 0 else 1e-2
            scale *= math.exp(0.5 * float(torch.randn((), generator=g)))
            layers[s.name] = Layer(U * math.sqrt(scale), V * math.sqrt(scale), (s.n, s.m))
        out.append(Adapter(layers, "synthetic", source=f"self-test-{i}"))
    return out


def _map(adapters: list[Adapter], fn) -> list[Adapter]:
    out = []
    for a in adapters:
        b = copy.copy(a)
        b.layers = {name: fn(name, layer) for name, layer in a.layers.items()}
        out.append(b)
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a).clamp_min(1e-300))


def run_self_test(ckpt: Any, *, count: int = 8, seed: int = 0) -> list[Check]:
    """The checks above on ``count`` synthetic adapters; the checkpoint itself is not modified."""
    from ..nets import collate

    g = torch.Generator().manual_seed(seed)
    rank = int(ckpt.card["hparams"].get("rank") or 4) if ckpt.architecture in NOT_INVARIANT else 4
    model = copy.deepcopy(ckpt.model).to("cpu", torch.float64).eval()

    def outputs(ads: list[Adapter]) -> torch.Tensor:
        with torch.no_grad():
            return model(collate(ads, ckpt.spec, "cpu", dtype=torch.float64, check=False)).double()

    base = _adapters(ckpt, count, rank, g)
    ref = outputs(base)
    judged = ckpt.architecture not in NOT_INVARIANT

    def gauge(name: str, layer: Layer) -> Layer:
        r = layer.rank
        R = torch.eye(r, dtype=torch.float64) + torch.randn(r, r, generator=g, dtype=torch.float64) / math.sqrt(r)
        R = R @ torch.diag(torch.where(torch.rand(r, generator=g) < 0.5, -1.0, 1.0).double())  # sign flips too
        return Layer(layer.U @ R, layer.V @ torch.linalg.inv(R).T, layer.shape)

    def pad(name: str, layer: Layer) -> Layer:
        z = torch.zeros
        return Layer(torch.cat([layer.U, z(layer.n, 3, dtype=torch.float64)], 1),
                     torch.cat([layer.V, z(layer.m, 3, dtype=torch.float64)], 1), layer.shape)

    def double(name: str, layer: Layer) -> Layer:
        return Layer(layer.U * 2.0, layer.V, layer.shape)

    def add_rank1(name: str, layer: Layer) -> Layer:  # same rank: the rank-1 term replaces nothing, it is mixed in
        u = torch.randn(layer.n, 1, generator=g, dtype=torch.float64) * layer.U.norm() / math.sqrt(layer.n * layer.rank)
        v = torch.randn(layer.m, 1, generator=g, dtype=torch.float64) / math.sqrt(layer.m)
        U, V = layer.U.clone(), layer.V.clone()
        U[:, :1] += u
        V[:, :1] += v
        return Layer(U, V, layer.shape)

    checks = []
    d = _rel(ref, outputs(_map(base, gauge)))
    checks.append(Check("gauge", "random R ∈ GL(r) per module (with sign flips)", d, d <= TOLERANCE if judged else None))
    if ckpt.architecture in NOT_INVARIANT:
        checks.append(Check("padding", "zero rank columns appended", math.nan, None))  # reads one fixed rank
    else:
        d = _rel(ref, outputs(_map(base, pad)))
        checks.append(Check("padding", "3 zero rank columns appended to every module", d, d <= TOLERANCE))
    d = _rel(ref, outputs(_map(base, double)))
    checks.append(Check("sensitivity", "every ΔW doubled", d, d >= SENSITIVE))
    d = _rel(ref, outputs(_map(base, add_rank1)))
    checks.append(Check("sensitivity", "every ΔW changed along a random direction", d, d >= SENSITIVE))
    return checks
