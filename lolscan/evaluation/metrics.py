"""Metrics for held-out evaluation, in plain torch (no scipy/sklearn dependency).

Regression: MSE (in the target's units), R², Kendall τ-b. Binary / multiclass: accuracy and
ROC AUC (multiclass: macro one-vs-rest). Multilabel: mean per-label accuracy and macro AUC.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..targets import Target

if TYPE_CHECKING:  # imported where used, so tables of metric names need no torch
    import torch

# The columns a comparison table shows per kind, in order.
HEADLINE = {
    "regression": ("mse", "r2", "kendall_tau"),
    "binary": ("accuracy", "auc"),
    "multiclass": ("accuracy", "auc"),
    "multilabel": ("mean_accuracy", "auc"),
    "count": ("accuracy", "mae", "mean_accuracy"),  # accuracy: the count is right; MAE in the target's units
}
METRIC_NAMES = {"mse": "MSE", "r2": "R²", "kendall_tau": "Kendall τ", "accuracy": "accuracy", "auc": "AUC", "mean_accuracy": "mean accuracy",
                "mae": "MAE", "within_one_label": "within one label"}
HIGHER_IS_BETTER = {"mse": False, "r2": True, "kendall_tau": True, "accuracy": True, "auc": True, "mean_accuracy": True,
                    "mae": False, "within_one_label": True}


def mse(pred: torch.Tensor, true: torch.Tensor) -> float:
    import torch

    return float(torch.mean((pred.double() - true.double()) ** 2))


def r2(pred: torch.Tensor, true: torch.Tensor) -> float:
    import torch

    t = true.double()
    ss_tot = float(torch.sum((t - t.mean()) ** 2))
    ss_res = float(torch.sum((pred.double() - t) ** 2))
    if ss_tot == 0.0:
        return math.nan
    return 1.0 - ss_res / ss_tot


def kendall_tau(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kendall τ-b (tie-corrected), O(N²) memory-light loop over rows; fine for test splits."""
    import torch

    x, y = x.double().flatten(), y.double().flatten()
    n = x.numel()
    if n < 2:
        return math.nan
    concordant_minus_discordant = 0.0
    ties_x = ties_y = 0.0
    pairs = n * (n - 1) / 2
    for i in range(n - 1):
        dx = torch.sign(x[i + 1 :] - x[i])
        dy = torch.sign(y[i + 1 :] - y[i])
        concordant_minus_discordant += float(torch.sum(dx * dy))
        ties_x += float(torch.sum(dx == 0))
        ties_y += float(torch.sum(dy == 0))
    denom = math.sqrt((pairs - ties_x) * (pairs - ties_y))
    return concordant_minus_discordant / denom if denom > 0 else math.nan


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative), ties count ½."""
    import torch

    s, y = scores.double().flatten(), labels.flatten() > 0.5
    pos, neg = s[y], s[~y]
    if pos.numel() == 0 or neg.numel() == 0:
        return math.nan
    # Rank-sum (Mann-Whitney U) with average ranks for ties.
    order = torch.argsort(s, stable=True)
    ranks = torch.empty_like(s)
    sorted_s = s[order]
    i, n = 0, s.numel()
    while i < n:
        j = i
        while j + 1 < n and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = pos.numel(), neg.numel()
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def _nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def target_metrics(target: Target, scores: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
    """Metrics of one target on labelled rows.

    scores: ``target.scores(out)`` (regression values in units, or probabilities);
    y, mask: ``target.encode(values)`` (regression y standardised, of the log for a log target; undone here).
    """
    s, t = scores[mask].double(), y[mask].double()
    n = int(mask.sum())
    out: dict[str, Any] = {"n": n}
    if n == 0:
        return out
    if target.kind == "regression":
        true = target.to_units(t[:, 0])
        pred = s[:, 0]
        out.update(mse=mse(pred, true), r2=r2(pred, true), kendall_tau=kendall_tau(pred, true))
    elif target.kind == "binary":
        out.update(accuracy=float(((s[:, 0] >= 0.5) == (t[:, 0] > 0.5)).double().mean()), auc=auc(s[:, 0], t[:, 0]))
    elif target.kind == "multiclass":
        cls = t[:, 0].long()
        out["accuracy"] = float((s.argmax(dim=1) == cls).double().mean())
        out["auc"] = _nanmean([auc(s[:, k], (cls == k).double()) for k in range(s.shape[1])])
    else:
        if target.kind == "count":  # the count first: it is the value a count target reports
            diff = ((s >= 0.5).sum(dim=1) - (t > 0.5).sum(dim=1)).abs()
            out["accuracy"] = float((diff == 0).double().mean())
            out["within_one_label"] = float((diff <= 1).double().mean())
            out["mae"] = float(diff.double().mean() * target.per_label)
        per_label = ((s >= 0.5) == (t > 0.5)).double().mean(dim=0)
        out["mean_accuracy"] = float(per_label.mean())
        out["exact_match"] = float(((s >= 0.5) == (t > 0.5)).all(dim=1).double().mean())
        out["auc"] = _nanmean([auc(s[:, k], t[:, k]) for k in range(s.shape[1])])
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def format_metric(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)
