"""Refit (`lolscan train --refit`): once validation has chosen the settings, the lr and each model's step, every
model is trained again from its own seed on the training rows and all validation rows.

Why: the validation rows did their work (choosing); after that they are labelled LoRAs like any other. On the
class-subset zoo (1,630 training and 182 validation LoRAs) an 11-model GL-net ensemble refitted this way named
the dataset size for 0.756 ± 0.011 of the test LoRAs over five ensembles against 0.733 ± 0.015 without (paired
+0.023 [+0.003, +0.044]; with a search per ensemble 0.744 against 0.723; bench/RESULTS.md, "Refit on train +
validation").

What stays from before the refit: the number of epochs (each model's best step, per target, times the ratio of
rows), its lr cuts (replayed at the scaled steps), the targets' normalisation and transforms, and calibration —
temperatures and conformal intervals are fitted on the held-out calibration rows with the models *before* the
refit (the refitted ones have seen those rows), and the validation metrics are theirs. The test metrics are the
refitted models'.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from ..utils.device import resolve_device
from .data import Dataset
from .loop import (_cut_lr, _evaluate, _fit_skip, _minibatches, _model_inputs, _outputs_for, _progress, _serve_per_target, _step, _to,
                   build, round_parameters)
from .options import TrainOptions, TrainResult, _lr


def train_fixed(ds: Dataset, opts: TrainOptions, stops: dict[str, int], cuts: Sequence[int] = ()) -> torch.nn.Module:
    """A fresh model trained on ``ds``'s training split for ``max(stops)`` steps, the lr cut by ``opts.lr_decay``
    after each step in ``cuts``; each target's outputs come from the weights at its own step in ``stops``. The
    same initialisation, minibatches and steps as `_train` at ``opts.seed``, without its validation checks."""
    device = resolve_device(opts.device)
    model = build(ds, opts, device)
    batch = _model_inputs(model, ds.split_adapters("train"), ds.spec, device)
    if hasattr(batch, "batch_outer"):
        batch = batch.batch_outer()
    ys = _to(ds.encoded("train"), device)
    _fit_skip(model, ds.targets, batch, ys)
    gen = torch.Generator().manual_seed(opts.seed)
    optim = torch.optim.AdamW(model.parameters(), lr=_lr(opts), weight_decay=opts.weight_decay)
    n = len(ds.splits["train"])
    keep, last = set(stops.values()), max(stops.values())
    states = {0: copy.deepcopy(model.state_dict())} if 0 in keep else {}
    order = _minibatches(n, min(opts.batch_size, n), gen)
    with _progress(opts) as bar:
        task = bar.add_task(f"refitting {opts.arch} (seed {opts.seed})", total=last)
        for step in range(1, last + 1):
            _step(model, optim, ds.targets, batch, ys, next(order), device)
            bar.advance(task)
            if step in keep:
                states[step] = copy.deepcopy(model.state_dict())
            if step in cuts:
                _cut_lr(optim, opts.lr_decay)
    model = _serve_per_target(model, ds.targets, stops, states)
    model.eval()
    return model


def members(result: TrainResult, opts: TrainOptions) -> list[tuple[int, dict[str, int], list[int]]]:
    """(seed, best step per target, lr cuts) of every model in ``result``: an ensemble's members, or the one."""
    ens = result.ensemble
    if ens:
        return list(zip(ens["seeds"], ens["best_steps"], ens["lr_cuts"]))
    return [(opts.seed, dict(result.best_steps), list(result.lr_cuts))]


def refit(ds: Dataset, opts: TrainOptions, before: TrainResult, hparams: dict[str, Any], lr: float) -> TrainResult:
    """``before``'s models trained again on ``ds``'s training and validation rows (see the module's docstring), as
    a result whose model, training and test outputs are the refitted ones' (weights rounded through
    ``opts.weights_dtype``) and whose validation (and calibration) outputs stay ``before``'s. Metrics are computed
    again; `calibrate` is still to run on the result."""
    from ..nets.ensemble import EnsembleNet

    rows = list(ds.splits["train"]) + list(ds.splits["val"])
    ratio = len(rows) / len(ds.splits["train"])
    refit_ds = replace(ds, splits={"train": rows, "val": [], "test": list(ds.splits["test"])})
    models, steps = [], []
    for seed, best_steps, cuts in members(before, opts):
        o = copy.copy(opts)
        o.hparams, o.lr, o.seed = dict(hparams), lr, seed
        stops = {name: max(1, round(s * ratio)) for name, s in best_steps.items()}
        last = max(stops.values())
        models.append(train_fixed(refit_ds, o, stops, [c2 for c in cuts if (c2 := round(c * ratio)) < last]))
        steps.append(stops)
    model = EnsembleNet(models) if len(models) > 1 else models[0]
    if opts.weights_dtype != "float32":
        round_parameters(model, opts.weights_dtype)
    outputs = {s: (_outputs_for(model, ds, ds.splits[s]) if s in ("train", "test") else out)
               for s, out in before.outputs.items()}
    metrics, test_scores = _evaluate(ds.targets, {k: v for k, v in outputs.items() if k != "calibration"}, before.ys)
    out = replace(before, model=model, outputs=outputs, metrics=metrics, test_scores=test_scores)
    out.refit = {"rows": len(rows), "train_rows": len(ds.splits["train"]), "val_rows": len(ds.splits["val"]),
                 "ratio": round(ratio, 6), "steps": steps}
    return out
