"""Training a checkpoint from a labelled manifest: load, split, fit, early-stop, evaluate, card.

Everything is seeded: the split (groups shuffled with ``seed``), the model initialisation and the
minibatch order, so the same command on the same files gives the same checkpoint (on one device).

- `options`: `TrainOptions` and `TrainResult`, the settings recommended per architecture, the default lr
- `data`: `Dataset` and `prepare` (a manifest's adapters read, split, targets normalised)
- `loop`: one training run (`build`, `_train`), its metrics and `calibrate`
- `search`: `train`, choosing settings, lr and log transforms by validation loss; ensembles, weight rounding
- `save`: the card, plot and domain of `save_checkpoint`
- `synthetic`: labelled synthetic zoos with known answers (tests and bench)

The names callers use are re-exported here. A re-export is a second name for the same object, not for the
module global: code reads a setting such as `SEARCH_MARGIN` from the module that defines it, so an experiment
that overrides one sets it there (``lolscan.training.search.SEARCH_MARGIN = 0.1``), and a test that replaces a
function patches the module whose code calls it (`train` calls `lolscan.training.search._train`).
"""
from __future__ import annotations

from .options import DEFAULT_LR, LR_GRID, RECOMMENDED, TrainOptions, TrainResult
from .data import Dataset, guess_base_model, load_all, prepare
from ..utils.device import resolve_device
from .loop import build, calibrate, run_safely
from .search import (
    CALIBRATION_MIN,
    LOG_TAIL_RATIO,
    SEARCH,
    SEARCH_CONFIDENCE,
    SEARCH_FREE,
    SEARCH_MARGIN,
    candidates,
    heavy_tailed,
    log_candidates,
    set_transform,
    train,
)
from .save import card_history, fit_domain_for, make_card, plot_panels, save_checkpoint
from .synthetic import write_heavy_tailed_zoo, write_synthetic_zoo

__all__ = [
    "CALIBRATION_MIN",
    "DEFAULT_LR",
    "LOG_TAIL_RATIO",
    "LR_GRID",
    "RECOMMENDED",
    "SEARCH",
    "SEARCH_CONFIDENCE",
    "SEARCH_FREE",
    "SEARCH_MARGIN",
    "Dataset",
    "TrainOptions",
    "TrainResult",
    "build",
    "calibrate",
    "candidates",
    "card_history",
    "fit_domain_for",
    "guess_base_model",
    "heavy_tailed",
    "load_all",
    "log_candidates",
    "make_card",
    "plot_panels",
    "prepare",
    "resolve_device",
    "run_safely",
    "save_checkpoint",
    "set_transform",
    "train",
    "write_heavy_tailed_zoo",
    "write_synthetic_zoo",
]
