"""Training a checkpoint from a labelled manifest; the code is in `lolscan.training.search`, re-exported here.

A re-export is a second name for the same object, not for the module global: code reads settings such as
`SEARCH_MARGIN` from the module that defines it, so an experiment that overrides one sets it there
(``lolscan.training.search.SEARCH_MARGIN = 0.1``), and a test that replaces a function patches the module
whose code calls it.
"""
from __future__ import annotations

from .search import (
    CALIBRATION_MIN,
    DEFAULT_LR,
    LOG_TAIL_RATIO,
    LR_GRID,
    RECOMMENDED,
    SEARCH,
    SEARCH_CONFIDENCE,
    SEARCH_FREE,
    SEARCH_MARGIN,
    Dataset,
    TrainOptions,
    TrainResult,
    build,
    calibrate,
    candidates,
    card_history,
    fit_domain_for,
    guess_base_model,
    heavy_tailed,
    load_all,
    log_candidates,
    make_card,
    plot_panels,
    prepare,
    resolve_device,
    run_safely,
    save_checkpoint,
    set_transform,
    train,
    write_heavy_tailed_zoo,
    write_synthetic_zoo,
)

# private helpers that tests and bench scripts import from here
from .search import (  # noqa: F401
    _confidence,
    _fit_skip,
    _keeps,
    _loss,
    _outputs,
    _row_losses,
    _search_loss,
    _spectra_of,
    _write_manifest_csv,
)

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
