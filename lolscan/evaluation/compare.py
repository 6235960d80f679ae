"""Honest comparisons of score tables, in numpy (scikit-learn only where it is installed).

- `recipe_columns` / `recipe_matrix`: what a zoo manifest says about how each LoRA was trained (log10 lr,
  steps, batch size, dropout, weight decay, rank, alpha and the 0/1 data-source columns ``src_*``).
- `fit_hp_baseline`: the hyperparameter-only baselines a metanetwork must beat — ridge on a cubic in
  log10 lr plus the rest (numpy, always) and gradient-boosted trees (scikit-learn's
  HistGradientBoosting*, only when importable: it is not a runtime dependency).
- `metric` / `bootstrap_indices` / `paired_bootstrap`: a row's headline metric on test rows and a
  paired bootstrap 95 % CI of (row − other row), test rows resampled together for both, the metric
  averaged over each row's seeds (so a row with five seeds is compared as one pooled row).
- `kendall_tau` (τ-b) and `healthy_rows` / `default_healthy_lr` for τ on the healthy bulk.

Predictions are numpy arrays in the units the metric reads: regression values ``(n,)``, binary
probabilities ``(n,)``, multiclass probabilities ``(n, k)``, multilabel probabilities ``(n, k)``; the
truth is the value ``(n,)``, the 0/1 label ``(n,)``, the class index ``(n,)`` or the 0/1 matrix ``(n, k)``.
"""
from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# pool_n, epochs: a v2 zoo's own-pool size and passes over it (recipe + seed decide them: a recipe column)
RECIPE = ("lr", "steps", "batch_size", "dropout", "weight_decay", "rank", "alpha", "pool_n", "epochs", "dataset_size")
# 0/1 columns of which data a LoRA saw: a language zoo's data sources, a diffusion zoo's classes and style
SOURCE_PREFIXES = ("src_", "cls_", "sty_")
# targets that are the style or a function of it (a font's attributes): the style columns would give them away
STYLE_TARGETS = ("style", "attributes")
# targets that count a family's 1s (a diffusion zoo's n_classes = the sum of its cls_* columns), or a multiple
# of that count (its dataset_size, where the recipe sets [data] images_per_class = m: m × n_classes): that
# family would give them away
COUNT_TARGETS = {"n_classes": "cls_", "dataset_size": "cls_"}
# columns tied to a family (its count, and the dataset size that images_per_class makes a multiple of it): a
# target made of the family, or one of them, reads none of them either
TIED = {"cls_": ("n_classes", "dataset_size")}
HEADLINE_METRIC = {"regression": "r2", "binary": "accuracy", "multiclass": "accuracy", "multilabel": "mean_accuracy",
                   "count": "accuracy"}  # a count: the share of rows whose count of labels called is right
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))
BOOTSTRAP = 2000


# ---- the recipe -------------------------------------------------------------------------------
def recipe_columns(columns: Sequence[str], target: str, kind: str = "regression", labels: Sequence[str] = ()) -> list[str] | None:
    """The manifest columns the hyperparameter-only baseline of ``target`` reads, or None when the
    manifest has no ``lr`` column (no recipe to fit on).

    The data columns (``src_*`` data sources, ``cls_*`` classes and ``sty_*`` style of a diffusion zoo;
    `SOURCE_PREFIXES`) are features, except where the target is made of them: a target column with that
    prefix, the style or a function of it (`STYLE_TARGETS`, ``attr_*``: a font's attributes), or a
    multilabel target whose labels are a prefix's suffixes (a zoo's ``sources`` or ``classes``). There the
    baseline drops that family and asks what lr, steps, … tell about which data a LoRA saw; in a zoo that
    draws the recipe and the data independently that is the label prior (each label's training-set
    frequency), which is the floor a metanetwork must clear. A count of a family's 1s (`COUNT_TARGETS`:
    ``n_classes``, and ``dataset_size``, which a recipe with ``images_per_class = m`` makes m × n_classes)
    drops that family too, and where the family goes so do the columns tied to it (`TIED`: ``n_classes``
    and ``dataset_size`` with ``cls_*``), so the baselines of ``n_classes``, ``dataset_size``, ``classes``
    and ``cls_*`` read none of the class facts, only what lr, steps, … tell. ``dataset_size`` is otherwise
    a recipe column."""
    cols = list(columns)
    if "lr" not in cols:
        return None
    data: list[str] = []
    tied: set[str] = set()
    for prefix in SOURCE_PREFIXES:
        family = sorted(c for c in cols if c.startswith(prefix))
        made_of = target.startswith(prefix) or (
            kind in ("multilabel", "count") and bool(labels) and {prefix + str(x) for x in labels} <= set(family)) or (
            prefix == "sty_" and (target in STYLE_TARGETS or target.startswith("attr_"))) or COUNT_TARGETS.get(target) == prefix
        if not made_of:
            data += family
        else:
            tied.update(TIED.get(prefix, ()))
    return [c for c in RECIPE if c in cols and c != target and c not in tied] + [s for s in data if s != target]


def recipe_matrix(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> np.ndarray:
    """Features ``(n, len(columns))``: log10 of ``lr``, the other columns as floats (missing: 0)."""
    out = np.zeros((len(rows), len(columns)))
    for i, row in enumerate(rows):
        for j, c in enumerate(columns):
            v = row.get(c)
            if c == "lr":
                v = float(v)
                if not v > 0 or not math.isfinite(v):
                    raise ValueError(f"lr {row.get(c)!r} is not a positive number")
                out[i, j] = math.log10(v)
            else:
                out[i, j] = float(v) if v not in (None, "") and not (isinstance(v, float) and math.isnan(v)) else 0.0
    return out


def _cubic(X: np.ndarray, columns: Sequence[str]) -> np.ndarray:
    """log lr, its square and cube, then the rest (where lr is the first column)."""
    if not columns or columns[0] != "lr":
        return X
    return np.column_stack([X[:, 0], X[:, 0] ** 2, X[:, 0] ** 3, X[:, 1:]])


# ---- the baselines ----------------------------------------------------------------------------
def ridge_loo(X: np.ndarray, Y: np.ndarray, Xt: np.ndarray, alphas: Sequence[float] = RIDGE_ALPHAS) -> np.ndarray:
    """Ridge on standardised features with an unpenalised intercept, α chosen by exact leave-one-out
    error over ``alphas`` (what scikit-learn's ``make_pipeline(StandardScaler(), RidgeCV(alphas))`` does).
    ``Y`` may have several columns: one α for all, by their mean LOO error. Returns predictions for ``Xt``."""
    Y2 = Y.reshape(len(Y), -1).astype(float)
    mu, sd = X.mean(0), X.std(0)
    sd = np.where(sd > 0, sd, 1.0)  # a constant column stays a column of zeros
    Z, Zt = (X - mu) / sd, (Xt - mu) / sd
    zc, yc = Z - Z.mean(0), Y2 - Y2.mean(0)
    U, s, Vt = np.linalg.svd(zc, full_matrices=False)
    uty = U.T @ yc
    n, best = len(Y2), None
    for a in alphas:
        shrink = s**2 / (s**2 + a)
        fit = U @ (shrink[:, None] * uty)
        hat = (U**2) @ shrink + 1.0 / n  # the intercept's share of the hat matrix
        loo = float(np.mean(((yc - fit) / (1.0 - hat)[:, None]) ** 2))
        if best is None or loo < best[0]:
            best = (loo, a)
    a = best[1]
    coef = Vt.T @ ((s / (s**2 + a))[:, None] * uty)
    pred = (Zt - Z.mean(0)) @ coef + Y2.mean(0)
    return pred.reshape((len(Xt),) + Y.shape[1:])


def gbt_available() -> bool:
    try:
        import sklearn.ensemble  # noqa: F401
    except ImportError:
        return False
    return True


def _one_hot(y: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k)[y.astype(int)]


def fit_hp_baseline(kind: str, X: np.ndarray, y: np.ndarray, Xt: np.ndarray, columns: Sequence[str],
                    *, classes: int = 0, models: Sequence[str] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Test predictions of each hyperparameter-only model fitted on ``(X, y)``: ``ridge`` always, ``gbt``
    where scikit-learn is installed (or as ``models`` asks). Classes: ridge is a linear probability
    model on the 0/1 (one-hot) labels, clipped to [0, 1]; gbt the classifier, one per label (multilabel).
    A count: the number of labels itself (ridge, rounded when scored; gbt a classifier over the numbers).
    The trees' ``random_state`` only matters with early stopping (over 10,000 rows): one fit stands for
    every seed of a table below that."""
    models = list(models) if models is not None else ["ridge"] + (["gbt"] if gbt_available() else [])
    out: dict[str, np.ndarray] = {}
    if kind == "count":  # the number of labels straight from the recipe (a count of per-label calls is a worse guess)
        n = y.sum(axis=1)
        if "ridge" in models:
            out["ridge"] = np.clip(ridge_loo(_cubic(X, columns), n, _cubic(Xt, columns)), 0, y.shape[1])
        if "gbt" in models:
            from sklearn.ensemble import HistGradientBoostingClassifier

            out["gbt"] = HistGradientBoostingClassifier(random_state=seed).fit(X, n.astype(int)).predict(Xt).astype(float)
        return out
    if "ridge" in models:
        Y = _one_hot(y, classes) if kind == "multiclass" else y
        pred = ridge_loo(_cubic(X, columns), Y, _cubic(Xt, columns))
        out["ridge"] = pred if kind == "regression" else np.clip(pred, 0.0, 1.0)
    if "gbt" in models:
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        if kind == "regression":
            out["gbt"] = HistGradientBoostingRegressor(random_state=seed).fit(X, y).predict(Xt)
        elif kind == "binary":
            out["gbt"] = _proba(HistGradientBoostingClassifier(random_state=seed), X, y, Xt)[:, 1]
        elif kind == "multiclass":
            out["gbt"] = _proba(HistGradientBoostingClassifier(random_state=seed), X, y, Xt, classes)
        else:
            out["gbt"] = np.column_stack([_proba(HistGradientBoostingClassifier(random_state=seed), X, y[:, j], Xt)[:, 1]
                                          for j in range(y.shape[1])])
    return out


def _proba(model: Any, X: np.ndarray, y: np.ndarray, Xt: np.ndarray, classes: int = 2) -> np.ndarray:
    """Class probabilities ``(n, classes)``, also when the training labels hold only some classes."""
    y = y.astype(int)
    out = np.zeros((len(Xt), classes))
    present = np.unique(y)
    if len(present) == 1:
        out[:, present[0]] = 1.0
        return out
    model.fit(X, y)
    out[:, model.classes_] = model.predict_proba(Xt)
    return out


# ---- metrics over test rows -------------------------------------------------------------------
def metric(kind: str, true: np.ndarray, pred: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray | float:
    """The headline metric (R², accuracy, mean per-label accuracy) on the rows ``idx``: one index
    vector gives a float; a matrix ``(B, m)`` of resampled indices gives ``B`` values at once."""
    true, pred = np.asarray(true, dtype=float), np.asarray(pred, dtype=float)
    if idx is None:
        idx = np.arange(len(true))
    idx = np.asarray(idx)
    t, p = true[idx], pred[idx]
    axes = tuple(range(idx.ndim - 1, t.ndim))  # over the rows (and the labels of a multilabel target)
    if kind == "regression":
        tot = ((t - t.mean(axis=-1, keepdims=True)) ** 2).sum(-1)
        res = ((p - t) ** 2).sum(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(tot > 0, 1.0 - res / np.where(tot > 0, tot, 1.0), np.nan)
    elif kind == "multiclass":  # probabilities (n, k), or class indices (n,)
        out = ((p.argmax(-1) if p.ndim > t.ndim else np.rint(p)) == t).mean(-1)
    elif kind == "count":  # the 0/1 label matrix, and probabilities (n, L) or numbers of labels (n,): is the count right
        out = (((p >= 0.5).sum(-1) if p.ndim == t.ndim else np.rint(p)) == (t > 0.5).sum(-1)).mean(-1)
    else:  # binary, multilabel
        out = ((p >= 0.5) == (t > 0.5)).mean(axis=axes)
    return float(out) if np.ndim(out) == 0 else out


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall τ-b (tie-corrected); NaN for fewer than two rows or a constant side."""
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    n = len(x)
    if n < 2:
        return math.nan
    s = tx = ty = 0.0
    for i in range(n - 1):
        dx, dy = np.sign(x[i + 1:] - x[i]), np.sign(y[i + 1:] - y[i])
        s += float((dx * dy).sum())
        tx += float((dx == 0).sum())
        ty += float((dy == 0).sum())
    pairs = n * (n - 1) / 2
    denom = math.sqrt((pairs - tx) * (pairs - ty))
    return s / denom if denom > 0 else math.nan


def default_healthy_lr(lrs: Sequence[float]) -> float:
    """The zoo's median lr. Where a zoo draws lr log-uniformly, training breaks in the top of the range
    (on qwen384e, mean ARC-C accuracy is flat up to lr 3e-3 and falls from there; the median is 7e-4),
    so the lower half is the healthy bulk without reading a label."""
    return float(np.median(np.asarray(lrs, dtype=float)))


def healthy_rows(lrs: Sequence[float], healthy_lr: float) -> list[int]:
    """Positions of the rows trained with lr ≤ ``healthy_lr`` (a cut on the recipe, not on the label)."""
    return [i for i, v in enumerate(lrs) if v is not None and float(v) <= healthy_lr]


def mean_metric(kind: str, true: np.ndarray, preds: Sequence[np.ndarray], idx: np.ndarray | None = None) -> Any:
    """The metric averaged over one row's seeds (a float, or ``B`` values for a matrix of indices)."""
    vals = [metric(kind, true, p, idx) for p in preds]
    return sum(vals) / len(vals)


def bootstrap_indices(n: int, reps: int = BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """``(reps, n)`` row indices drawn with replacement, from Python's ``random.Random(seed)`` (the same
    draws on every platform and numpy version; the bench tables have always used them)."""
    rng = random.Random(seed)
    return np.array([[rng.randrange(n) for _ in range(n)] for _ in range(reps)], dtype=np.int64).reshape(reps, n)


def percentile_ci(values: Sequence[float]) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of bootstrap values (order statistics, NaNs dropped)."""
    v = sorted(float(x) for x in values if not math.isnan(x))
    if not v:
        return math.nan, math.nan
    return v[int(0.025 * len(v))], v[int(0.975 * len(v)) - 1]


def paired_bootstrap(kind: str, true: np.ndarray, preds_a: Sequence[np.ndarray], preds_b: Sequence[np.ndarray],
                     *, reps: int = BOOTSTRAP, seed: int = 0, boots: np.ndarray | None = None) -> tuple[float, float, float]:
    """(metric(a) − metric(b), CI low, CI high): each metric averaged over that row's seeds, the test rows
    resampled together for both (pass ``boots`` to share one set of draws across a table)."""
    true = np.asarray(true, dtype=float)
    boots = bootstrap_indices(len(true), reps, seed) if boots is None else boots
    point = mean_metric(kind, true, preds_a) - mean_metric(kind, true, preds_b)
    diffs = mean_metric(kind, true, preds_a, boots) - mean_metric(kind, true, preds_b, boots)
    lo, hi = percentile_ci(diffs)
    return float(point), lo, hi


def paired_bootstrap_tau(true: np.ndarray, preds_a: Sequence[np.ndarray], preds_b: Sequence[np.ndarray],
                         *, reps: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float, float]:
    """As `paired_bootstrap`, for Kendall τ between prediction and truth (O(reps · n²): small splits)."""
    true = np.asarray(true, dtype=float)
    boots = bootstrap_indices(len(true), reps, seed)

    def tau(preds: Sequence[np.ndarray], idx: np.ndarray) -> float:
        return float(np.mean([kendall_tau(np.asarray(p)[idx], true[idx]) for p in preds]))

    every = np.arange(len(true))
    diffs = [tau(preds_a, b) - tau(preds_b, b) for b in boots]
    lo, hi = percentile_ci(diffs)
    return tau(preds_a, every) - tau(preds_b, every), lo, hi


def compare_rows(kind: str, true: Sequence[Any], runs: Mapping[str, Sequence[np.ndarray]], *,
                 healthy: Sequence[int] | None = None, reps: int = BOOTSTRAP, seed: int = 0) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The honest table of one target: per row (name → its per-seed test predictions) the headline
    metric's mean and sd over seeds, Kendall τ on the ``healthy`` rows (regression), and the paired
    bootstrap (row − best row) with its 95 % CI, one set of resampled test rows for the whole table.
    Returns ``(stats by row, the best row)``; the best row's entry has no ``diff``."""
    true = np.asarray(true, dtype=float)
    stats: dict[str, dict[str, Any]] = {}
    for name, preds in runs.items():
        vals = [metric(kind, true, np.asarray(p, dtype=float)) for p in preds]
        entry = {"metric": HEADLINE_METRIC[kind], "mean": float(np.mean(vals)),
                 "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, "seeds": len(vals)}
        if kind == "regression" and healthy is not None:
            h = np.asarray(healthy, dtype=np.int64)
            entry["tau_healthy"] = float(np.mean([kendall_tau(np.asarray(p, dtype=float)[h], true[h]) for p in preds]))
        stats[name] = entry
    finite = [k for k in stats if not math.isnan(stats[k]["mean"])]
    if not finite:
        return stats, None
    best = max(finite, key=lambda k: stats[k]["mean"])
    boots = bootstrap_indices(len(true), reps, seed)
    for name, entry in stats.items():
        if name != best:
            d, lo, hi = paired_bootstrap(kind, true, runs[name], runs[best], boots=boots)
            entry.update(diff=d, ci95=[lo, hi])
    return stats, best
