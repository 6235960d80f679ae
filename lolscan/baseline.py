"""The hyperparameter-only baseline of a prepared dataset, and what a trained model gains over it.

A zoo manifest often records how each LoRA was trained (lr, steps, batch size, dropout, weight decay,
rank, alpha, the 0/1 data-source columns ``src_*``). A label that is mostly a function of that recipe
— a LoRA trained at too high an lr scores badly — can be predicted without reading a single weight,
so a metanetwork's test metric means little until it is set against that. `fit` fits the baselines
of `lolscan.evaluation.compare` (ridge always; gradient-boosted trees where scikit-learn is
installed) on the training and validation rows' recipes, and predicts the test rows; `margins` gives
each target's card entry: the strongest baseline's test metric, the model's, the margin and its
paired bootstrap 95 % CI. Manifests without an ``lr`` column get no baseline, said in the entry.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .evaluation.compare import BOOTSTRAP, HEADLINE_METRIC, metric, paired_bootstrap
from .targets import LABEL_SETS

if TYPE_CHECKING:
    from .targets import Target
    from .training import Dataset

NO_RECIPE = "the manifest has no lr column: no recipe to fit a hyperparameter-only baseline on"
BASELINE_ROWS = {"ridge": "hp-ridge", "gbt": "hp-gbt"}  # table rows of the baselines


def truth(t: Target, values: list[Any]) -> np.ndarray:
    """Labels as `compare` reads them: values (regression, in units, at full precision), 0/1 labels,
    class indices, or the 0/1 label matrix (multilabel, count)."""
    if t.kind == "regression":
        return np.array([float(v) for v in t.true_values(values)])
    y, _ = t.encode(values)
    return y.numpy().astype(float) if t.kind in LABEL_SETS else y[:, 0].numpy().astype(float)


def model_scores(t: Target, scores: Any) -> np.ndarray:
    """A model's test scores (``target.scores``, a tensor) as `compare` reads them."""
    s = np.asarray(scores.detach().cpu().double().numpy() if hasattr(scores, "detach") else scores, dtype=float)
    return s[:, 0] if t.kind in ("regression", "binary") and s.ndim == 2 else s


def fit(ds: Dataset, models: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per target: ``{"features", "positions" (labelled rows within the test split), "true", "lr",
    "models": {name: test predictions}}``, or ``{"none": why}``."""
    from .evaluation.compare import fit_hp_baseline, recipe_columns, recipe_matrix

    out: dict[str, dict[str, Any]] = {}
    manifest = ds.manifest
    for t in ds.targets:
        cols = recipe_columns(manifest.columns, t.name, t.kind, t.labels) if manifest is not None else None
        if cols is None:
            out[t.name] = {"none": NO_RECIPE}
            continue
        vals = ds.values[t.name]
        fit_rows = [i for i in ds.splits["train"] + ds.splits["val"] if not t.missing(vals[i])]
        test = ds.splits["test"]
        positions = [k for k, i in enumerate(test) if not t.missing(vals[i])]
        if not positions:
            out[t.name] = {"none": "no labelled test rows"}
            continue
        try:
            X = recipe_matrix([manifest.rows[i].labels for i in fit_rows], cols)
            Xt = recipe_matrix([manifest.rows[test[k]].labels for k in positions], cols)
        except (TypeError, ValueError) as exc:
            out[t.name] = {"none": f"the recipe columns do not parse ({exc})"}
            continue
        preds = fit_hp_baseline(t.kind, X, truth(t, [vals[i] for i in fit_rows]), Xt, cols,
                                classes=len(t.labels), models=models)
        out[t.name] = {"features": cols, "positions": positions, "true": truth(t, [vals[test[k]] for k in positions]),
                       "lr": [float(manifest.rows[test[k]].labels["lr"]) for k in positions], "models": preds}
    return out


def margins(targets: list[Target], hp: Mapping[str, dict[str, Any]], test_scores: Mapping[str, Any],
            *, reps: int = BOOTSTRAP) -> dict[str, dict[str, Any]]:
    """Each target's card entry: the strongest hyperparameter-only model on the test split (``model``,
    its ``baseline`` metric: picking the stronger of the two on test favours the baseline, the
    skeptical side), the checkpoint's metric, ``margin`` = checkpoint − baseline and its paired
    bootstrap ``ci95`` over test rows; ``{"none": why}`` where there is no baseline."""
    out: dict[str, dict[str, Any]] = {}
    for t in targets:
        b = hp.get(t.name) or {"none": NO_RECIPE}
        if "none" in b or t.name not in test_scores:
            out[t.name] = {"none": b.get("none", "no test scores")}
            continue
        true = b["true"]
        mine = model_scores(t, test_scores[t.name])[b["positions"]]
        values = {name: metric(t.kind, true, p) for name, p in b["models"].items()}
        best = max(values, key=lambda k: -np.inf if np.isnan(values[k]) else values[k])
        margin, lo, hi = paired_bootstrap(t.kind, true, [mine], [b["models"][best]], reps=reps)
        out[t.name] = {"metric": HEADLINE_METRIC[t.kind], "model": best, "baseline": _num(values[best]),
                       "checkpoint": _num(metric(t.kind, true, mine)), "margin": _num(margin), "ci95": [_num(lo), _num(hi)],
                       "models": {k: _num(v) for k, v in values.items()}, "features": list(b["features"]),
                       "test_rows": len(true), "bootstrap": reps}
    return out


def _num(x: float) -> float | None:
    """A float for a JSON card (NaN, e.g. R² of a constant label, becomes null)."""
    x = float(x)
    return None if np.isnan(x) else x
