"""The checkpoint a run writes: its card (`make_card`: options, metrics, training data), the
predicted-vs-true plot, the in-domain reference and, on --overwrite, the replaced card's history
(`save_checkpoint`)."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..utils.files import sha256_file
from ..targets import LABEL_SETS, Target, split_set
from .data import Dataset
from .options import TrainResult


def _label_summary(t: Target, values: list[Any]) -> dict[str, Any]:
    present = [v for v in values if not t.missing(v)]
    if t.kind == "regression":
        xs = [float(v) for v in present]
        return {"n": len(xs), "min": min(xs), "max": max(xs), "mean": sum(xs) / len(xs)}
    if t.kind in LABEL_SETS:
        counts = Counter(x for v in present for x in split_set(v))
    else:
        counts = Counter(t.true_values(present))
    return {"n": len(present), "counts": {k: counts.get(k, 0) for k in t.labels}}


def _states(model: torch.nn.Module, best_steps: dict[str, int], targets: Sequence[Target]) -> dict[str, Any] | None:
    """A `PerTargetNet`'s card ``states``: which of its weights serve which target (None for one state)."""
    from ..nets.pertarget import PerTargetNet

    if not isinstance(model, PerTargetNet):
        return None
    return {"count": len(model.members), "steps": sorted(set(best_steps.values())),
            "targets": {t.name: int(model.column_member[t.offset]) for t in targets}}


def make_card(ds: Dataset, result: TrainResult, *, name: str, description: str = "") -> dict[str, Any]:
    from .. import __version__
    from ..checkpoint import COUNT_SCHEMA_VERSION, ENSEMBLE_SCHEMA_VERSION, STATES_SCHEMA_VERSION
    from ..nets.ensemble import EnsembleNet

    model = result.model
    opts = result.options
    ranks = sorted({r for a in ds.adapters for r in a.ranks})
    ensemble = None
    if isinstance(model, EnsembleNet):  # how many members, and each one's states (`lolscan.checkpoint.load_checkpoint`)
        per_member = result.ensemble.get("best_steps") or [result.best_steps] * len(model.members)
        ensemble = {"members": len(model.members),
                    "states": [_states(m, steps, ds.targets) for m, steps in zip(model.members, per_member)]}
        states = None
    else:  # which weights serve which target
        states = _states(model, result.best_steps, ds.targets)
    # the oldest schema that holds the card, so older lolscan reads it where it can (and refuses an ensemble in one line)
    version = (COUNT_SCHEMA_VERSION if any(t.kind == "count" for t in ds.targets) else ENSEMBLE_SCHEMA_VERSION if ensemble
               else STATES_SCHEMA_VERSION if states else 1)
    card = {
        "schema_version": version,
        "name": name,
        "description": description,
        "lolscan_version": __version__,
        "architecture": opts.arch,
        "hparams": dict(model.hparams),
        "out_dim": sum(t.width for t in ds.targets),
        "base_model": ds.base_model,
        "layer_spec": ds.spec.to_json(),
        "targets": [t.to_json() for t in ds.targets],
        "metrics": result.metrics,
        "training": {
            "seed": opts.seed,
            "steps": result.steps,
            "best_step": result.best_step,
            **({"best_steps": dict(result.best_steps)} if len(ds.targets) > 1 and result.best_steps else {}),
            "max_steps": opts.max_steps,
            "batch_size": opts.batch_size,
            "lr": result.lr if not math.isnan(result.lr) else opts.lr,
            **({"lr_search": result.lr_search} if result.lr_search else {}),
            "weight_decay": opts.weight_decay,
            "patience": opts.patience,
            "eval_every": opts.eval_every,
            "seconds": round(result.seconds, 2),
            **({"search": result.tried} if result.tried else {}),
            "calibration_rows": result.calibration_rows,
            **({"ensemble": dict(result.ensemble)} if result.ensemble else {}),
            **({"refit": dict(result.refit)} if result.refit else {}),
        },
        **({"weights_dtype": opts.weights_dtype} if opts.weights_dtype != "float32" else {}),
        "training_data": {
            "manifest": Path(ds.manifest.path).name,
            "manifest_sha256": sha256_file(ds.manifest.path),
            "adapters": len(ds.adapters),
            "splits": {s: len(v) for s, v in ds.splits.items()},
            "excluded_non_finite": len(ds.excluded),
            "split_method": ds.split_method,
            "formats": dict(Counter(a.format for a in ds.adapters)),
            "ranks": ranks,
            "modules": len(ds.spec),
            "labels": {t.name: _label_summary(t, [ds.values[t.name][i] for i in ds.splits["train"]]) for t in ds.targets},
        },
        "tensors": {},  # filled in by Checkpoint.save
    }
    if states is not None:
        card["states"] = states
    if ensemble is not None:
        card["ensemble"] = ensemble
    return card


def plot_panels(ds: Dataset, result: TrainResult) -> list[tuple[list[float], list[float]]]:
    """(true, predicted) per target on the test split; classification: (true 0/1 per class, probability)."""
    panels = []
    idx = ds.splits["test"]
    for t in ds.targets:
        if t.name not in result.test_scores:
            continue
        y, mask = t.encode([ds.values[t.name][i] for i in idx])
        s = result.test_scores[t.name][mask]
        y = y[mask]
        if t.kind == "regression":
            panels.append((t.to_units(y[:, 0]).tolist(), s[:, 0].tolist()))
        elif t.kind == "binary":
            panels.append((y[:, 0].tolist(), s[:, 0].tolist()))
        elif t.kind == "multiclass":
            onehot = torch.nn.functional.one_hot(y[:, 0].long(), t.width).float()
            panels.append((onehot.flatten().tolist(), s.flatten().tolist()))
        elif t.kind == "count":  # the value it reports against the truth, in units
            panels.append(((y > 0.5).sum(1).double().mul(t.per_label).tolist(),
                           (s >= 0.5).sum(1).double().mul(t.per_label).tolist()))
        else:
            panels.append((y.flatten().tolist(), s.flatten().tolist()))
    return panels


def _spectra_of(ds: Dataset, split: str, chunk: int = 64) -> torch.Tensor:
    from ..evaluation.calibration import spectra
    from ..nets import collate

    ads = ds.split_adapters(split)
    return torch.cat([spectra(collate(ads[i : i + chunk], ds.spec)) for i in range(0, len(ads), chunk)])


def fit_domain_for(ds: Dataset) -> Any:
    """The in-domain reference of a dataset's training adapters (None without training adapters)."""
    from ..evaluation.calibration import fit_domain

    if not ds.splits["train"]:
        return None
    val = _spectra_of(ds, "val") if ds.splits["val"] else torch.zeros(0)
    train = _spectra_of(ds, "train")
    return fit_domain(train, val if val.numel() else train[:0])


def card_history(folder: Path) -> list[dict[str, Any]]:
    """The card's ``history`` for a checkpoint about to replace the one in ``folder``: the old card's own history
    plus what it measured (test metrics, margins over the recipe, its training data), so a retrained bundled
    checkpoint keeps its earlier figures. Empty where no readable card is there."""
    from ..checkpoint import read_card
    from ..errors import LolscanError

    try:
        old = read_card(folder)
    except LolscanError:
        return []
    data = old.get("training_data") or {}
    entry = {
        "lolscan_version": old.get("lolscan_version"),
        "architecture": old.get("architecture"),
        "seed": (old.get("training") or {}).get("seed"),
        "training_data": {k: data[k] for k in ("manifest_sha256", "adapters", "splits") if k in data},
        "test": (old.get("metrics") or {}).get("test", {}),
        "hp_baseline": {t: {k: v for k, v in e.items() if k in ("metric", "model", "baseline", "checkpoint", "margin",
                                                                  "ci95", "test_rows", "none")}
                        for t, e in (old.get("hp_baseline") or {}).items() if isinstance(e, dict)},
    }
    earlier = old.get("history")
    return (earlier if isinstance(earlier, list) else []) + [entry]


def save_checkpoint(ds: Dataset, result: TrainResult, out: Path, *, name: str, overwrite: bool = False, description: str = "",
                    hp: dict[str, dict[str, Any]] | None = None, max_shard_bytes: int | None = None) -> Path:
    """Write the checkpoint folder (atomically) with its predicted-vs-true PNG inside. The card's
    ``hp_baseline`` holds each target's margin over the hyperparameter-only baseline on the test split
    (`lolscan.baseline`; pass ``hp``, its fit, to share one fit between checkpoints of one dataset).
    Weights past ``max_shard_bytes`` are written as shards (`lolscan.checkpoint.shards`)."""
    from .. import baseline
    from ..checkpoint import PLOT_NAME, Checkpoint
    from ..scan.plot import plot_title, scatter_png

    from safetensors.torch import save as save_tensors

    card = make_card(ds, result, name=name, description=description)
    card["hp_baseline"] = baseline.margins(ds.targets, baseline.fit(ds) if hp is None else hp, result.test_scores)
    if overwrite:
        history = card_history(Path(out))
        if history:
            card["history"] = history
    ckpt = Checkpoint(result.model, card, ds.targets, ds.spec)
    files = {}
    domain = fit_domain_for(ds)
    if domain is not None:
        from ..evaluation.calibration import DOMAIN_FILE

        files[DOMAIN_FILE] = save_tensors(domain.to_tensors())
        card["domain"] = domain.card()
        if ds.splits["test"]:
            test = domain.scores(_spectra_of(ds, "test"))
            card["domain"]["test_in_domain"] = float((test <= domain.threshold).double().mean())
    panels = plot_panels(ds, result)
    if panels:
        test = result.metrics.get("test", {})
        titles = [plot_title(t.name, t.kind, test.get(t.name, {})) for t in ds.targets if t.name in result.test_scores]
        files[PLOT_NAME] = scatter_png(panels, titles=titles)
        card["plot"] = {
            "file": PLOT_NAME,
            "split": "test",
            "panels": [t.name for t in ds.targets if t.name in result.test_scores],
            "axes": "x = true value (classification: 1 for the true class, else 0), y = prediction (probability)",
        }
    return ckpt.save(out, overwrite=overwrite, files=files, max_shard_bytes=max_shard_bytes)
