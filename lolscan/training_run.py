"""What `lolscan train` does after preparing the dataset: train one architecture, or every one side by
side (``--arch all``), and write each checkpoint. Training itself is `lolscan.training`.

Nothing here prints: skipped architectures and written checkpoints reach the caller through callbacks.
"""
from __future__ import annotations

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
               saved: Callable[[str, Path], None] = lambda name, path: None) -> dict[str, dict[str, Any]]:
    """Train ``base`` with each of ``archs``; results by architecture (metrics, steps, seconds, the
    checkpoint written). With ``every``, each gets only the ``hparams`` it accepts, and one that
    cannot train on this dataset is skipped (``{"error": …}``) instead of ending the run."""
    from .nets import hparam_names
    from .training import run_safely, save_checkpoint
    from .training import train as train_model

    results: dict[str, dict[str, Any]] = {}
    for a in archs:
        hp = {k: v for k, v in hparams.items() if not every or k in hparam_names(a)}
        opts = replace(base, arch=a, hparams=hp)
        try:
            result = run_safely(lambda: train_model(ds, opts))
        except UsageError as exc:
            if not every:
                raise
            results[a] = {"error": str(exc)}
            skipped(a, exc)
            continue
        entry: dict[str, Any] = {"metrics": result.metrics, "steps": result.steps, "best_step": result.best_step, "seconds": result.seconds}
        if a in dests:
            name = dests[a].name
            path = save_checkpoint(ds, result, dests[a], name=name, overwrite=overwrite, description=description)
            entry["checkpoint"] = str(path)
            saved(name, path)
        results[a] = entry
    return results
