"""Shared pieces of the metanetworks: the `MetaNet` base class, the MLP head, feature standardisation."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..adapter import Adapter
from .batch import FactorBatch, collate
from .spec import LayerSpec


def make_mlp(in_dim: int, out_dim: int, hidden: int, layers: int, dropout: float = 0.0, *, norm: bool = False) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` (GELU; with ``norm`` a LayerNorm before each
    GELU, as the paper's invariant head), then a linear map; ``layers=0`` is linear."""
    mods: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), *([nn.LayerNorm(hidden)] if norm else []), nn.GELU()]
        if dropout:
            mods.append(nn.Dropout(dropout))
        width = hidden
    mods.append(nn.Linear(width, out_dim))
    return nn.Sequential(*mods)


def _chunks(items: Sequence[Adapter], size: int) -> Iterable[Sequence[Adapter]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def common_rank(adapters: Iterable[Adapter]) -> int:
    """The single rank all modules of all adapters share; ValueError otherwise. (Training gives
    ``mlp``/``mlp-oalign`` `max_rank` instead: they zero-pad smaller ranks.)"""
    ranks: set[int] = set()
    for adapter in adapters:
        ranks.update(adapter.ranks)
    if len(ranks) != 1:
        raise ValueError(f"adapters do not share one rank: ranks {sorted(ranks)}")
    return ranks.pop()


def max_rank(adapters: Iterable[Adapter]) -> int:
    """The largest rank of any module of any adapter: the ``rank=`` of ``mlp``/``mlp-oalign``, which
    zero-pad every module to it (ΔW = U Vᵀ is unchanged by appending zero columns to U and V). On a
    zoo of one rank it is that rank. ValueError when no adapter has a module of rank above 0."""
    rank = max((r for adapter in adapters for r in adapter.ranks), default=0)
    if rank <= 0:
        raise ValueError("the adapters have no module of rank above 0")
    return rank


class MetaNet(nn.Module):
    """Base of every model: ``forward(FactorBatch) -> [B, out_dim]``.

    ``hparams`` holds the keyword arguments (defaults resolved) that rebuild the model with
    ``build_model(arch, spec, out_dim, **hparams)``; ``config()`` bundles all four as JSON.
    Data-dependent initialisation (templates, input scales, feature statistics) is done by
    ``fit(train_adapters)`` before training and lives in buffers, so it is in the state_dict.
    """

    arch: ClassVar[str] = ""

    def __init__(self, spec: LayerSpec, out_dim: int, hparams: dict[str, Any]):
        super().__init__()
        if not isinstance(spec, LayerSpec) or len(spec) == 0:
            raise ValueError("a metanetwork needs a non-empty LayerSpec")
        if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim <= 0:
            raise ValueError(f"out_dim must be a positive int, got {out_dim!r}")
        self.spec = spec
        self.out_dim = out_dim
        self.hparams: dict[str, Any] = dict(hparams)

    def config(self) -> dict[str, Any]:
        return {"arch": self.arch, "out_dim": self.out_dim, "hparams": dict(self.hparams), "spec": self.spec.to_json()}

    def _ref_tensor(self) -> torch.Tensor:
        for t in self.parameters():
            return t
        for t in self.buffers():
            return t
        return torch.empty(0)

    @property
    def device(self) -> torch.device:
        return self._ref_tensor().device

    @property
    def dtype(self) -> torch.dtype:
        return self._ref_tensor().dtype

    def collate(self, adapters: Adapter | Iterable[Adapter], *, check: bool = True) -> FactorBatch:
        """`collate` onto this model's device and dtype."""
        return collate(adapters, self.spec, self.device, dtype=self.dtype, check=check)

    @torch.no_grad()
    def predict(self, adapters: Sequence[Adapter], *, batch_size: int = 32) -> torch.Tensor:
        """Outputs for many adapters, in chunks (no grad; the caller chooses train/eval mode)."""
        outs = [self(self.collate(chunk)) for chunk in _chunks(list(adapters), batch_size)]
        return torch.cat(outs, dim=0)

    def fit(self, adapters: Sequence[Adapter], *, batch_size: int = 32) -> MetaNet:
        """Data-dependent initialisation from training adapters. The base class has none."""
        return self

    def forward(self, batch: FactorBatch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_batch(self, batch: FactorBatch) -> None:
        if batch.spec != self.spec:
            raise ValueError("batch was collated for a different layer spec than this model's")


@dataclass
class FeatureBatch:
    """Features already extracted from a `FactorBatch`: the baselines' feature extraction has no
    learned parameters, so training computes it once per split instead of once per step."""

    spec: LayerSpec
    x: torch.Tensor  # [B, F]

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    def select(self, rows: Sequence[int] | slice) -> FeatureBatch:
        if not isinstance(rows, slice):
            rows = torch.as_tensor([int(i) for i in rows], dtype=torch.long, device=self.x.device)
        return FeatureBatch(self.spec, self.x[rows])


class FeatureMLP(MetaNet):
    """A baseline: fixed feature extraction ``features(batch) -> [B, F]``, standardised, into an MLP."""

    def __init__(self, spec: LayerSpec, out_dim: int, hparams: dict[str, Any], feature_dim: int):
        super().__init__(spec, out_dim, hparams)
        limit = int(self.hparams.get("max_features", 0)) or None
        if limit is not None and feature_dim > limit:
            raise ValueError(
                f"{self.arch} would read {feature_dim:,} input features per adapter (limit max_features={limit:,}); "
                "use glnet or mlp-svd for adapters this large, or raise max_features"
            )
        self.feature_dim = feature_dim
        self.register_buffer("feat_mean", torch.zeros(feature_dim))
        self.register_buffer("feat_std", torch.ones(feature_dim))
        self.head = make_mlp(feature_dim, out_dim, self.hparams["hidden"], self.hparams["layers"], self.hparams["dropout"])

    def features(self, batch: FactorBatch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extract(self, batch: FactorBatch, chunk: int = 256, max_elements: int = 1 << 27) -> FactorBatch | FeatureBatch:
        """The batch's features, computed once (in chunks), or the batch itself when they would take
        more than ``max_elements`` floats (e.g. mlp-dense on large layers)."""
        self._check_batch(batch)
        if batch.batch_size * self.feature_dim > max_elements:
            return batch
        with torch.no_grad():
            x = torch.cat([self.features(batch.select(slice(i, i + chunk)))
                           for i in range(0, batch.batch_size, chunk)])
        return FeatureBatch(batch.spec, x)

    def forward(self, batch: FactorBatch | FeatureBatch) -> torch.Tensor:
        self._check_batch(batch)
        x = batch.x if isinstance(batch, FeatureBatch) else self.features(batch)
        if self.hparams["standardize"]:
            x = (x - self.feat_mean) / self.feat_std
        return self.head(x)

    def _fit_inputs(self, adapters: Sequence[Adapter]) -> None:
        """Hook for subclasses (e.g. choose a template) before feature statistics are taken."""

    def fit(self, adapters: Sequence[Adapter], *, batch_size: int = 32) -> FeatureMLP:
        adapters = list(adapters)
        if not adapters:
            raise ValueError("fit needs at least one training adapter")
        self._fit_inputs(adapters)
        if not self.hparams["standardize"]:
            return self
        total = torch.zeros(self.feature_dim, dtype=torch.float64, device=self.device)
        total_sq = torch.zeros_like(total)
        with torch.no_grad():
            for chunk in _chunks(adapters, batch_size):
                x = self.features(self.collate(chunk)).double()
                total += x.sum(0)
                total_sq += (x * x).sum(0)
        count = len(adapters)
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0.0)
        std = var.sqrt()
        std = torch.where(std > 1e-12 * (1.0 + mean.abs()), std, torch.ones_like(std))
        self.feat_mean.copy_(mean.to(self.feat_mean.dtype))
        self.feat_std.copy_(std.to(self.feat_std.dtype))
        return self


def mlp_hparams(hidden: int, layers: int, dropout: float, standardize: bool) -> dict[str, Any]:
    if hidden <= 0 or layers < 0 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"bad MLP head settings: hidden={hidden}, layers={layers}, dropout={dropout}")
    return {"hidden": int(hidden), "layers": int(layers), "dropout": float(dropout), "standardize": bool(standardize)}


def pad_rank(t: torch.Tensor, rank: int) -> torch.Tensor:
    """Zero-pad (or cut, only ever zero columns) the last dim of ``t`` to ``rank``."""
    r = t.shape[-1]
    if r == rank:
        return t
    if r > rank:
        return t[..., :rank]
    return torch.nn.functional.pad(t, (0, rank - r))
