"""Uncertainty and domain for a trained checkpoint, fitted on its validation split.

- Regression: a split-conformal interval. The half-width q is the ⌈(n+1)·level⌉-th smallest
  absolute validation residual, so [ŷ − q, ŷ + q] covers the truth with probability ≥ level for
  an adapter drawn like the validation ones (Vovk et al.; Lei et al. 2018). Constant width: it
  says how far off a typical prediction is, not which adapters are harder. A log-transformed
  target (`Target.transform`) fits q on log residuals: [ŷ·e^−q, ŷ·e^q], the same guarantee since
  exp is monotone, and a width proportional to the prediction.
- Classes: temperature scaling (Guo et al. 2017): one T per target dividing the logits, fitted
  by validation log-loss, so probabilities are calibrated without changing any decision.
- Domain: how far an adapter's spectra are from the training adapters'. The descriptor is, per
  module, log(1 + σⱼ / ref) of the top singular values (ref = the training median of σ₁), a
  GL-invariant summary any architecture's input determines; the score is the mean distance to the
  5 nearest training adapters over the median of that for the validation adapters. An adapter is
  in domain when its score is at most the validation adapters' 99th percentile.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

DOMAIN_FILE = "domain.safetensors"
DOMAIN_K = 8  # singular values per module in the descriptor
NEIGHBOURS = 5
DOMAIN_QUANTILE = 0.99


def conformal_halfwidth(residuals: torch.Tensor, level: float = 0.9) -> float:
    """Split-conformal half-width from absolute validation residuals (inf when there are too few)."""
    r = residuals.double().abs().flatten()
    r = r[~r.isnan()]
    n = r.numel()
    k = math.ceil((n + 1) * level)
    if n == 0 or k > n:
        return math.inf
    return float(r.sort().values[k - 1])


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, kind: str, steps: int = 200) -> float:
    """The temperature T > 0 minimising validation log-loss of ``logits / T`` (1 when it cannot be fitted)."""
    logits, y = logits.double().detach(), y.double()
    if logits.numel() == 0:
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        opt.zero_grad()
        z = logits / log_t.exp()
        if kind == "multiclass":
            loss = torch.nn.functional.cross_entropy(z, y[:, 0].long())
        else:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
        loss.backward()
        return loss

    try:
        opt.step(loss_fn)
    except RuntimeError:
        return 1.0
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) and 1e-2 <= t <= 1e2 else 1.0


# ---- domain ------------------------------------------------------------------------------------
def spectra(batch: Any, k: int = DOMAIN_K) -> torch.Tensor:
    """``[B, L, k]`` top singular values of every module of a `FactorBatch` (zero past the rank), float32 on
    the CPU; computed in float64 once per batch (`lolscan.nets.svd.batch_spectra`, shared with a model's
    spectral features)."""
    from ..nets.svd import batch_spectra

    return batch_spectra(batch, k).float().cpu()


@dataclass
class Domain:
    """Reference descriptors of the training adapters and the scale and threshold of the score."""

    ref: torch.Tensor  # [L] training median of σ₁ per module
    train: torch.Tensor  # [N, L·k] descriptors of the training adapters
    scale: float  # median k-NN distance of the validation adapters
    threshold: float  # in-domain when score <= threshold

    def descriptors(self, sv: torch.Tensor) -> torch.Tensor:
        return torch.log1p(sv / self.ref.view(1, -1, 1)).flatten(1)

    def knn_distance(self, desc: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
        d = torch.cdist(desc.double(), self.train.double())
        if exclude_self:
            d.fill_diagonal_(math.inf)
        k = min(NEIGHBOURS, self.train.shape[0] - (1 if exclude_self else 0))
        return d.topk(max(k, 1), largest=False).values.mean(1)

    def scores(self, sv: torch.Tensor) -> torch.Tensor:
        """Domain score per adapter (1 ≈ a typical validation adapter; larger = farther from training)."""
        return self.knn_distance(self.descriptors(sv)) / self.scale

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"ref": self.ref.float().contiguous(), "train": self.train.float().contiguous()}

    def card(self) -> dict[str, Any]:
        return {"file": DOMAIN_FILE, "descriptor": f"log(1 + σ_j / ref) of the top {DOMAIN_K} singular values per module",
                "neighbours": NEIGHBOURS, "scale": self.scale, "threshold": self.threshold,
                "threshold_rule": f"{DOMAIN_QUANTILE:.0%} quantile of the validation adapters' scores"}

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], card: dict[str, Any]) -> Domain:
        return cls(tensors["ref"], tensors["train"], float(card["scale"]), float(card["threshold"]))


def fit_domain(train_sv: torch.Tensor, val_sv: torch.Tensor) -> Domain:
    """A `Domain` from the spectra ``[N, L, k]`` of the training and validation adapters."""
    from ..nets.svd import median_top

    dom = Domain(median_top(train_sv[..., 0]).float(), torch.zeros(0), 1.0, math.inf)
    dom.train = dom.descriptors(train_sv)
    held = val_sv if val_sv.shape[0] else train_sv
    d = dom.knn_distance(dom.descriptors(held), exclude_self=not val_sv.shape[0])
    scale = float(d.median())
    dom.scale = scale if scale > 0 else 1.0
    dom.threshold = float(torch.quantile(d / dom.scale, DOMAIN_QUANTILE)) if d.numel() else math.inf
    return dom


def interval_coverage(target: Any, scores: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """``{"interval_coverage": …}`` of a calibrated regression target on labelled rows (``target.scores``
    output, ``target.encode`` labels); empty for other targets or without labelled rows."""
    if target.kind != "regression" or target.interval is None or not bool(mask.any()):
        return {}
    true = target.to_units(y[mask][:, 0]).tolist()
    pred = scores[mask][:, 0].tolist()
    if target.transform == "none":
        return {"interval_coverage": coverage(pred, true, target.interval)}
    # the interval `Target.decode` reports (asymmetric for a log target), row by row
    pairs = [(p, t) for p, t in zip(pred, true) if not (math.isnan(p) or math.isnan(t))]
    return {"interval_coverage": sum(target.covers(p, t) for p, t in pairs) / len(pairs) if pairs else math.nan}


def coverage(pred: Sequence[float], true: Sequence[float], halfwidth: float) -> float:
    pairs = [(p, t) for p, t in zip(pred, true) if not (math.isnan(p) or math.isnan(t))]
    return sum(abs(p - t) <= halfwidth for p, t in pairs) / len(pairs) if pairs else math.nan
