"""What `lolscan train` does after preparing the dataset: train one architecture, or every one side by
side (``--arch all``), and write each checkpoint. Training itself is `lolscan.training`.

Nothing here prints: skipped architectures and written checkpoints reach the caller through callbacks.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .errors import UsageError
from .training import Dataset, TrainOptions


def destinations(out: str | None, archs: list[str], every: bool, overwrite: bool) -> dict[str, Path]:
    """Each architecture's checkpoint path (``OUT-<arch>`` when ``every``), resolved before hours of
    training so that a bad --out fails at once; none without ``out``."""
    from .checkpoint import output_path

    dests = {a: output_path(f"{out}-{a}" if every else out) for a in archs} if out else {}
    for d in dests.values():
        if d.exists() and not overwrite:
            raise UsageError(f"{d} already exists (pass --overwrite to replace it)")
    return dests


def train_each(ds: Dataset, archs: list[str], hparams: dict[str, Any], base: TrainOptions, *, every: bool,
               dests: dict[str, Path], overwrite: bool = False, description: str = "",
               skipped: Callable[[str, UsageError], None] = lambda arch, exc: None,
               saved: Callable[[str, Path], None] = lambda name, path: None,
               hp: dict[str, dict[str, Any]] | None = None, max_shard_bytes: int | None = None) -> dict[str, dict[str, Any]]:
    """Train ``base`` with each of ``archs``; results by architecture (metrics, steps, seconds, the
    test split's scores per target, the margin over the hyperparameter-only baseline ``hp`` — its
    `lolscan.baseline.fit`, fitted here when not given — and the checkpoint written). With ``every``,
    each gets only the ``hparams`` it accepts, and one that cannot train on this dataset is skipped
    (``{"error": …}``) instead of ending the run."""
    from . import baseline
    from .nets import hparam_names
    from .training import run_safely, save_checkpoint
    from .training import train as train_model

    results: dict[str, dict[str, Any]] = {}
    for a in archs:
        opts = replace(base, arch=a, hparams={k: v for k, v in hparams.items() if not every or k in hparam_names(a)})
        try:
            result = run_safely(lambda: train_model(ds, opts))
        except UsageError as exc:
            if not every:
                raise
            results[a] = {"error": str(exc)}
            skipped(a, exc)
            continue
        entry: dict[str, Any] = {"metrics": result.metrics, "steps": result.steps, "best_step": result.best_step, "seconds": result.seconds,
                                 "lr": result.lr, "test_scores": {t: s.tolist() for t, s in result.test_scores.items()}}
        if len(ds.targets) > 1:
            entry["best_steps"] = dict(result.best_steps)  # per-target early stopping: where each target's outputs come from
        if result.lr_search:
            entry["lr_search"] = result.lr_search
        if result.ensemble:  # --ensemble K: every member's seed and steps (steps and best_step above: the first's)
            entry["ensemble"] = dict(result.ensemble)
        if result.refit:  # --refit: the rows and steps each model was trained again with
            entry["refit"] = dict(result.refit)
        logged = [t.name for t in ds.targets if t.transform != "none"]
        if logged:  # `train` kept the log transform for these (the targets are this architecture's until the next)
            entry["log_targets"] = logged
        if hp is None:
            hp = baseline.fit(ds)
        entry["hp_baseline"] = baseline.margins(ds.targets, hp, result.test_scores)
        if a in dests:
            name = dests[a].name
            path = save_checkpoint(ds, result, dests[a], name=name, overwrite=overwrite, description=description, hp=hp,
                                   max_shard_bytes=max_shard_bytes)
            entry["checkpoint"] = str(path)
            saved(name, path)
        results[a] = entry
    return results


def compare_results(ds: Dataset, results: dict[str, dict[str, Any]], hp: dict[str, dict[str, Any]], *,
                    healthy_lr: float | None = None, reps: int | None = None) -> dict[str, Any]:
    """The honest rows of ``lolscan train --arch all``'s table: the hyperparameter-only baselines'
    test metrics (``baselines``: row → ``{"metrics": {"test": …}}``, as `train_each`'s results), and
    per target every row's (architectures and baselines) headline metric, Kendall τ on the healthy
    test rows (lr ≤ ``healthy_lr``; default the zoo's median lr; regression) and the paired bootstrap
    95 % CI of (row − best row) over the test rows (``targets``: name → ``{"best", "rows"}``)."""
    import numpy as np

    from . import baseline
    from .evaluation.compare import BOOTSTRAP, compare_rows, default_healthy_lr, healthy_rows
    from .evaluation.metrics import target_metrics

    lrs = _lrs(ds)
    if healthy_lr is None and lrs is not None:
        healthy_lr = default_healthy_lr([v for v in lrs if v is not None])
    out: dict[str, Any] = {"healthy_lr": healthy_lr, "baselines": {}, "targets": {},
                           "no_baseline": sorted({b["none"] for b in hp.values() if "none" in b})}
    test = ds.splits["test"]
    for t in ds.targets:
        pos = [k for k, i in enumerate(test) if not t.missing(ds.values[t.name][i])]
        if not pos:
            continue
        true = baseline.truth(t, [ds.values[t.name][test[k]] for k in pos])
        runs = {a: [baseline.model_scores(t, np.asarray(r["test_scores"][t.name]))[pos]] for a, r in results.items()
                if "error" not in r and t.name in r.get("test_scores", {})}
        b = hp.get(t.name, {})
        for model, pred in b.get("models", {}).items():
            row = baseline.BASELINE_ROWS[model]
            runs[row] = [pred]
            y, mask = t.encode([ds.values[t.name][test[k]] for k in pos])
            m = target_metrics(t, torch_scores(t, pred), y, mask)
            if t.kind == "count":  # it guessed a number, not labels: no label metrics
                m = {k: v for k, v in m.items() if k not in ("mean_accuracy", "auc")}
            out["baselines"].setdefault(row, {"metrics": {"test": {}}})["metrics"]["test"][t.name] = m
        healthy = healthy_rows([lrs[test[k]] for k in pos], healthy_lr) if lrs is not None and healthy_lr is not None else None
        stats, best = compare_rows(t.kind, true, runs, healthy=healthy, reps=reps or BOOTSTRAP)
        out["targets"][t.name] = {"best": best, "rows": stats, "healthy_rows": None if healthy is None else len(healthy)}
    return _no_nan(out)


def _no_nan(x: Any) -> Any:
    """NaN (τ of fewer than two healthy rows, R² of a constant label) as None, so the JSON is JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_no_nan(v) for v in x]
    return x


def _lrs(ds: Dataset) -> list[float | None] | None:
    """Every row's lr (None where it does not parse), or None when the manifest has no lr column."""
    if ds.manifest is None or "lr" not in ds.manifest.columns:
        return None
    out: list[float | None] = []
    for r in ds.manifest.rows:
        try:
            out.append(float(r.labels.get("lr")))
        except (TypeError, ValueError):
            out.append(None)
    return out


def torch_scores(t: Any, pred: Any) -> Any:
    """A baseline's predictions as the ``(n, width)`` score tensor `target_metrics` reads (a count's numbers of
    labels as a 0/1 matrix that calls that many)."""
    import torch

    s = torch.as_tensor(pred, dtype=torch.float64)
    if t.kind == "count" and s.ndim == 1:
        k = s.round().clamp(0, t.width).long()
        return (torch.arange(t.width)[None, :] < k[:, None]).double()
    return s[:, None] if s.ndim == 1 else s
