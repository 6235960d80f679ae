"""The synthetic invariant suite: zoos of in-memory adapters whose labels are known functions of ΔW.

Every adapter has three modules, ``l0`` and ``l1`` of 64×48 and ``l2`` of 32×40. Each layer is a
random update ΔW = A S Bᵀ (A, B orthonormal, S a random spectrum at a log-uniform scale), stored
as factors (U, V) = (A S G, B G⁻ᵀ) with a random G ∈ GL(r), so the factors themselves carry no
canonical gauge. Layers ``l0`` and ``l1`` also hold planted rank-1 terms along fixed secret
directions: c₀·u*v*ᵀ in ``l0`` and c₁·u*v*ᵀ in ``l1`` (the same u*, v*), and in ``l1`` one of
three secret class directions pⱼqⱼᵀ. Zoo variants:

- ``base``: rank 4 everywhere;
- ``heavy``: as base, but every 10th adapter has each ΔW multiplied by k ∈ [30, 300] (log-uniform),
  as finetunes at a far too high learning rate do;
- ``mixed``: each layer's rank drawn from {1, 2, 4, 8, 16, 32} (one zoo mixes them all).

`TASKS` lists the labels: norms, spectra, effective rank, linear functionals, a cross-layer trace,
classes of planted directions and which layer is largest. The bench (``bench/invariants.py``) and
a small slice in the tests read them from here.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lolscan.adapter import Adapter, Layer

SHAPES = {"l0": (64, 48), "l1": (64, 48), "l2": (32, 40)}
MIXED_RANKS = (1, 2, 4, 8, 16, 32)
ZOOS = ("base", "heavy", "mixed")


@dataclass(frozen=True)
class Task:
    name: str
    zoo: str
    kind: str  # regression | binary | multiclass
    label: Callable[[dict[str, torch.Tensor], dict], object]  # (ΔW per layer, planted facts) -> label
    family: str  # norm | spectrum | functional | cross | class
    hard: bool = False  # no architecture can identify it from 200 adapters: judged at 1,000

    @property
    def id(self) -> str:
        return f"{self.name}@{self.zoo}" if self.zoo != "base" else self.name


def _sv(dw: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(dw)


def _fro(dw: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(dw))


def _secrets(seed: int = 1234) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def unit(k: int) -> torch.Tensor:
        x = torch.randn(k, generator=g, dtype=torch.float64)
        return x / x.norm()

    n, m = SHAPES["l0"]
    out = {"u": unit(n), "v": unit(m), "M": torch.randn(n, m, generator=g, dtype=torch.float64) / math.sqrt(n * m)}
    for j in range(3):
        out[f"p{j}"], out[f"q{j}"] = unit(n), unit(m)
    return out


SECRETS = _secrets()


def _erank(s: torch.Tensor) -> float:
    """Effective rank (Σσ)² / Σσ² (1 for rank one, r for a flat spectrum of rank r)."""
    return float(s.sum() ** 2 / (s.pow(2).sum() + 1e-300))


def _entropy_rank(s: torch.Tensor) -> float:
    """Roy and Vetterli's effective rank exp(H(p)), p = σ / Σσ (another function of the spectrum's shape)."""
    p = s[s > 1e-12 * s[0]] / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def _stable_rank(s: torch.Tensor) -> float:
    """Stable rank ‖ΔW‖_F² / ‖ΔW‖₂²."""
    return float(s.pow(2).sum() / s[0] ** 2)


TASKS: tuple[Task, ...] = (
    # per-layer norms and spectra
    Task("fro0", "base", "regression", lambda d, p: _fro(d["l0"]), "norm"),
    Task("spec0", "base", "regression", lambda d, p: float(_sv(d["l0"])[0]), "spectrum"),
    Task("sv2_l2", "base", "regression", lambda d, p: float(_sv(d["l2"])[1]), "spectrum"),
    Task("nuclear2", "base", "regression", lambda d, p: float(_sv(d["l2"]).sum()), "norm"),
    Task("erank2", "base", "regression", lambda d, p: _erank(_sv(d["l2"])[:4]), "spectrum"),
    Task("fro_total", "base", "regression", lambda d, p: sum(_fro(x) for x in d.values()), "norm"),
    Task("log_ratio01", "base", "regression", lambda d, p: math.log(_fro(d["l0"]) / _fro(d["l1"])), "norm"),
    # linear functionals ⟨ΔW, M⟩
    Task("lin_rank1", "base", "regression", lambda d, p: float(SECRETS["u"] @ d["l0"] @ SECRETS["v"]), "functional"),
    Task("lin_full", "base", "regression", lambda d, p: float((d["l0"] * SECRETS["M"]).sum()), "functional", hard=True),
    # a trace of a product of two layers' updates
    Task("trace01", "base", "regression", lambda d, p: float((d["l0"] * d["l1"]).sum()), "cross"),
    # classes
    Task("planted_class", "base", "multiclass", lambda d, p: f"c{p['cls']}", "class"),
    Task("largest_layer", "base", "multiclass",
         lambda d, p: max(d, key=lambda k: _fro(d[k]) / math.sqrt(d[k].numel())), "class"),
    Task("spec2_gt1", "base", "binary", lambda d, p: int(float(_sv(d["l2"])[0]) > 1.0), "class"),
    # heavy-tailed scales
    Task("fro0", "heavy", "regression", lambda d, p: _fro(d["l0"]), "norm"),
    Task("spec1", "heavy", "regression", lambda d, p: float(_sv(d["l1"])[0]), "spectrum"),
    Task("lin_rank1", "heavy", "regression", lambda d, p: float(SECRETS["u"] @ d["l0"] @ SECRETS["v"]), "functional"),
    # mixed ranks 1..32
    Task("fro0", "mixed", "regression", lambda d, p: _fro(d["l0"]), "norm"),
    Task("spec2", "mixed", "regression", lambda d, p: float(_sv(d["l2"])[0]), "spectrum"),
    Task("erank1", "mixed", "regression", lambda d, p: _erank(_sv(d["l1"])), "spectrum"),
    Task("rv_erank2", "base", "regression", lambda d, p: _entropy_rank(_sv(d["l2"])[:4]), "spectrum"),
    Task("srank0", "mixed", "regression", lambda d, p: _stable_rank(_sv(d["l0"])), "spectrum"),
    Task("fro_total", "mixed", "regression", lambda d, p: sum(_fro(x) for x in d.values()), "norm"),
    Task("planted_class", "mixed", "multiclass", lambda d, p: f"c{p['cls']}", "class"),
)


def task(task_id: str) -> Task:
    for t in TASKS:
        if t.id == task_id:
            return t
    raise KeyError(f"unknown task {task_id!r}; known: {', '.join(t.id for t in TASKS)}")


def _layer(name: str, r: int, scale: float, planted: list[tuple[float, torch.Tensor, torch.Tensor]],
           g: torch.Generator, rng: random.Random, k: float) -> tuple[Layer, torch.Tensor]:
    n, m = SHAPES[name]
    free = max(r - len(planted), 0)
    cols_u, cols_v = [], []
    if free:
        A = torch.linalg.qr(torch.randn(n, free, generator=g, dtype=torch.float64))[0]
        B = torch.linalg.qr(torch.randn(m, free, generator=g, dtype=torch.float64))[0]
        s = torch.tensor(sorted((scale * math.exp(rng.gauss(0.0, 0.6)) for _ in range(free)), reverse=True),
                         dtype=torch.float64)
        cols_u.append(A * s)
        cols_v.append(B)
    for c, a, b in planted:
        cols_u.append((c * a).unsqueeze(1))
        cols_v.append(b.unsqueeze(1))
    U = torch.cat(cols_u, 1) * math.sqrt(k)
    V = torch.cat(cols_v, 1) * math.sqrt(k)
    rank = U.shape[1]
    G = torch.randn(rank, rank, generator=g, dtype=torch.float64) / math.sqrt(rank) + torch.eye(rank, dtype=torch.float64)
    U32 = (U @ G).float()
    V32 = (V @ torch.linalg.inv(G).T).float()
    dw = U32.double() @ V32.double().T  # exactly what the adapter holds
    layer = Layer(U32, V32, (n, m), alpha=float(rank), scale=1.0)
    return layer, dw


def make_zoo(zoo: str, count: int, seed: int) -> tuple[list[Adapter], list[dict[str, torch.Tensor]], list[dict]]:
    """``count`` adapters of variant ``zoo``, with their exact ΔW (float64) and planted facts."""
    if zoo not in ZOOS:
        raise ValueError(f"unknown zoo {zoo!r}; choose one of {ZOOS}")
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    adapters, deltas, facts = [], [], []
    u, v = SECRETS["u"], SECRETS["v"]
    for i in range(count):
        broken = zoo == "heavy" and i % 10 == 9
        k = math.exp(rng.uniform(math.log(30.0), math.log(300.0))) if broken else 1.0
        cls = rng.randrange(3)
        c0, c1, c_cls = rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(0.5, 2.0)
        plants = {
            "l0": [(c0, u, v)],
            "l1": [(c1, u, v), (c_cls, SECRETS[f"p{cls}"], SECRETS[f"q{cls}"])],
            "l2": [],
        }
        layers, dws = {}, {}
        for name in SHAPES:
            r = rng.choice(MIXED_RANKS) if zoo == "mixed" else 4
            r = min(r, *SHAPES[name])
            planted = plants[name][:r]
            scale = math.exp(rng.uniform(math.log(0.1), math.log(1.0)))
            layers[name], dws[name] = _layer(name, r, scale, planted, g, rng, k)
        adapters.append(Adapter(layers, "synthetic", source=f"{zoo}-{seed}-{i:05d}"))
        deltas.append(dws)
        facts.append({"cls": cls, "broken": broken})
    return adapters, deltas, facts


def labels(t: Task, deltas: list[dict[str, torch.Tensor]], facts: list[dict]) -> list[object]:
    return [t.label(d, p) for d, p in zip(deltas, facts)]
