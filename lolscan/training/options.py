"""What one training run is told and what it gives back: `TrainOptions` (with the settings `lolscan train`
recommends per architecture and the learning rate a run uses when none is set) and `TrainResult`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

# What `lolscan train` gives an architecture for the hyperparameters the user does not set. The
# classes' own defaults stay what older checkpoint cards were written with (cards are rebuilt
# through them); these are the settings the synthetic invariant suite chose (bench/RESULTS.md,
# "GL-net on the invariant suite").
RECOMMENDED: dict[str, dict[str, Any]] = {
    "glnet": {"d": 16, "depth": 1, "scale": "median", "squash": "asinh", "spectral": 8},
}


@dataclass
class TrainOptions:
    arch: str = "glnet"
    hparams: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    max_steps: int = 2000
    batch_size: int = 32
    lr: float | None = 1e-3  # None: chosen by validation loss among LR_GRID (see `train`); `lolscan train`'s default
    weight_decay: float = 1e-4
    eval_every: int = 25
    patience: int = 12  # evaluations without a better validation loss before stopping
    min_steps: int = 500  # no early stop and no lr cut before this many steps
    decay_after: int = 4  # evaluations without a better validation loss before the lr is cut
    lr_decay: float = 0.3  # the factor it is cut by (1 = a constant lr)
    device: str = "auto"
    progress: bool = True
    threads: int | None = None  # CPU threads for torch; 1 is fastest for tiny models on busy machines
    # Regression targets' transform (`Target.transform`): "auto" tries log on the targets `log_candidates`
    # names and keeps it where validation prefers it; "none" never; "log" fits every regression target
    # whose labelled values are all > 0 on its log, without asking validation (a baseline for benches).
    transform: str = "auto"
    # With several targets: keep each target's weights at its own best validation loss and serve its
    # outputs from them (`PerTargetNet` where the best steps differ); training stops when no target has
    # improved for `patience` evaluations. False: one state, at the best summed validation loss.
    per_target: bool = True
    # K > 1: after the search (at ``seed``), K − 1 more models with the chosen settings at seeds seed + 1 …
    # seed + K − 1; the checkpoint serves the mean of the K models' raw outputs (`lolscan.nets.EnsembleNet`).
    ensemble: int = 1
    # The precision the checkpoint stores its weights in (`WEIGHTS_DTYPES`): the kept model's parameters are
    # rounded through it before calibration and the test metrics, so the card measures the weights it ships.
    weights_dtype: str = "float32"
    # True: once validation has chosen the settings, the lr and each model's step, every model is trained again
    # from its seed on the training and all validation rows for that step scaled by the row ratio (the same
    # epochs; lr cuts replayed), as `lolscan train --refit` (lolscan.training.refit).
    refit: bool = False
    # True: regression predictions are kept within the training split's label range (`Target.low`/`high`,
    # recorded in the card); False (`lolscan train --no-clamp`): the model's outputs as they are.
    clamp: bool = True


@dataclass
class TrainResult:
    model: torch.nn.Module
    metrics: dict[str, dict[str, dict[str, Any]]]  # split -> target -> metric -> value
    history: list[dict[str, float]]
    best_step: int
    steps: int
    seconds: float
    test_scores: dict[str, torch.Tensor]  # target -> scores on the test split
    options: TrainOptions
    best_loss: float = math.nan  # the monitored (validation) loss at best_step
    chosen: dict[str, Any] = field(default_factory=dict)  # what the validation search picked
    outputs: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # split -> raw model outputs (CPU)
    ys: dict[str, Any] = field(default_factory=dict, repr=False)  # split -> target -> (y, mask) (CPU)
    tried: list[dict[str, Any]] = field(default_factory=list)  # every candidate: its settings and validation loss
    calibration_rows: int = 0  # validation rows the intervals and temperatures were fitted on
    best_steps: dict[str, int] = field(default_factory=dict)  # target -> the step its outputs come from
    lr: float = math.nan  # the learning rate the kept model trained with
    lr_search: list[dict[str, float]] = field(default_factory=list)  # with lr=None: every lr tried and its validation loss
    ensemble: dict[str, Any] = field(default_factory=dict)  # ensemble > 1: members, seeds, best_steps and steps per member
    lr_cuts: list[int] = field(default_factory=list)  # the steps after which the lr was cut on a plateau
    refit: dict[str, Any] = field(default_factory=dict)  # opts.refit: rows, ratio and steps per model (lolscan.training.refit)


# The learning rates `train` tries with ``lr=None`` (`lolscan train --lr auto`, the default), after the
# settings of `SEARCH` were chosen at DEFAULT_LR: it walks the grid from DEFAULT_LR, first down, and goes on in
# a direction only while the validation loss falls; the lowest validation loss wins (no margin: no lr is
# simpler than another; DEFAULT_LR, tried first, wins ties). Three points, a factor √10 apart: on the real
# 1,216-LoRA SmolLM2 zoo's 12-way `sources`, GL-net reached test mean accuracy 0.730 at 3e-4 against 0.709
# at 1e-3 and 0.518 at 3e-3 (bench/RESULTS.md), so the best lr lies within a factor 3 of the default on
# one side and a wider grid would spend a full run (early-stopped) per point where it rarely pays. The walk
# costs one extra run where a lower lr wins, two otherwise.
LR_GRID = (3e-4, 1e-3, 3e-3)
DEFAULT_LR = 1e-3


def _lr(opts: TrainOptions) -> float:
    return DEFAULT_LR if opts.lr is None else opts.lr
