"""Checkpoints: a folder with ``model.safetensors`` (or its shards) and ``card.json``. Never pickle.

`card` reads and validates the card (and names the folder's files), `shards` writes and reads the
weights in one file or several, `locations` says where
checkpoints live (bundled, the user's, ``--model``, ``--out``), `loaded` holds the loaded
`Checkpoint`/`CheckpointSet` and whether an adapter fits. Every name other code imports from
``lolscan.checkpoint`` is re-exported here.
"""
from __future__ import annotations

from .card import (
    ARCHITECTURES,
    CARD_NAME,
    CARD_SCHEMA_VERSION,
    COUNT_SCHEMA_VERSION,
    ENSEMBLE_SCHEMA_VERSION,
    PLOT_NAME,
    REQUIRED,
    STATES_SCHEMA_VERSION,
    WEIGHTS_DTYPES,
    WEIGHTS_NAME,
    CheckpointError,
    read_card,
    validate_card,
)
from .loaded import Checkpoint, CheckpointSet, check_fits, load_checkpoint, load_checkpoints
from .locations import (
    bundled_dir,
    default_model,
    is_checkpoint,
    list_checkpoints,
    looks_like_path,
    output_path,
    resolve,
    task_summary,
    user_dir,
)

__all__ = [
    "ARCHITECTURES",
    "CARD_NAME",
    "CARD_SCHEMA_VERSION",
    "COUNT_SCHEMA_VERSION",
    "ENSEMBLE_SCHEMA_VERSION",
    "PLOT_NAME",
    "REQUIRED",
    "STATES_SCHEMA_VERSION",
    "WEIGHTS_DTYPES",
    "WEIGHTS_NAME",
    "Checkpoint",
    "CheckpointError",
    "CheckpointSet",
    "bundled_dir",
    "check_fits",
    "default_model",
    "is_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_checkpoints",
    "looks_like_path",
    "output_path",
    "read_card",
    "resolve",
    "task_summary",
    "user_dir",
    "validate_card",
]
