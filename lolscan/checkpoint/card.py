"""The card: ``card.json``, what a checkpoint folder holds beside its weights, read and validated.

The card holds everything needed to rebuild and trust the model: architecture and
hyperparameters, the layer spec it was trained on, the base model family, the targets
(kind, units, labels, normalisation), held-out metrics, a summary of the training data, the
lolscan version, and the name/shape of every tensor (checked against the file on load).
Here too: the file names of a checkpoint folder, the schema versions, and `CheckpointError`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError, UsageError
from ..nets.names import ARCHITECTURES  # torch-free: reading a card needs no torch
from ..targets import Target

# 2: the card may hold ``states`` (several weights, one per target's best step: `lolscan.nets.PerTargetNet`).
# 3: the card may hold ``ensemble`` (models trained at several seeds, outputs averaged: `lolscan.nets.EnsembleNet`).
# 4: a target may be a ``count`` (`lolscan.targets`: a multilabel head read as per_label × the labels called).
# A card is written with the oldest version that holds it (1 without either), so older lolscan reads what it can
# and refuses the rest in one line rather than misreading it.
STATES_SCHEMA_VERSION = 2
ENSEMBLE_SCHEMA_VERSION = 3
COUNT_SCHEMA_VERSION = 4  # a card with a count target (an older lolscan would not know the kind)
CARD_SCHEMA_VERSION = 4  # the newest this lolscan reads
CARD_NAME = "card.json"
WEIGHTS_NAME = "model.safetensors"
# The precisions a card's ``weights_dtype`` may name (absent: float32). Parameters are stored in it, buffers in
# float32; loading widens them to float32 exactly (`lolscan train --weights-dtype`).
WEIGHTS_DTYPES = ("float32", "float16", "bfloat16")
PLOT_NAME = "pred_vs_true.png"
REQUIRED = ("schema_version", "architecture", "hparams", "out_dim", "layer_spec", "targets", "tensors", "lolscan_version")


class CheckpointError(InputError):
    """A checkpoint folder that cannot be trusted (missing, malformed, tensors disagree): exit 3."""


def read_card(folder: Path) -> dict[str, Any]:
    path = folder / CARD_NAME
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"missing {CARD_NAME}", path=folder) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"unreadable card: {exc}", path=path) from None
    validate_card(card, path)
    return card


def validate_card(card: Any, path: Path | str) -> None:
    """Schema version and required fields, with one-line errors."""
    if not isinstance(card, dict):
        raise CheckpointError("card is not a JSON object", path=path)
    version = card.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError("card has no integer schema_version", path=path)
    if version > CARD_SCHEMA_VERSION:
        from .._version import __version__

        by = card.get("lolscan_version")
        raise CheckpointError(
            f"card schema_version {version} is newer than this lolscan understands (lolscan {__version__} reads up to "
            f"{CARD_SCHEMA_VERSION}" + (f"; the card was written by lolscan {by}" if isinstance(by, str) and by else "")
            + "); upgrade lolscan",
            path=path,
        )
    if version < 1:
        raise CheckpointError(f"card schema_version {version} is not valid", path=path)
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise CheckpointError(f"card lacks required field(s): {', '.join(missing)}", path=path)
    if card["architecture"] not in ARCHITECTURES:
        raise CheckpointError(f"card names unknown architecture {card['architecture']!r}", path=path)
    if not isinstance(card["hparams"], dict):
        raise CheckpointError("card hparams must be an object", path=path)
    if not isinstance(card["targets"], list) or not card["targets"] or not all(isinstance(t, dict) for t in card["targets"]):
        raise CheckpointError("card targets must be a non-empty list of objects", path=path)
    try:
        targets = [Target.from_json(t) for t in card["targets"]]
    except (TypeError, UsageError) as exc:
        raise CheckpointError(f"card has a malformed target: {exc}", path=path) from None
    width = 0
    for t in targets:
        if t.kind == "count" and version < COUNT_SCHEMA_VERSION:
            raise CheckpointError(f"card target {t.name!r} is a count but the card says schema_version {version} "
                                  f"(a count needs {COUNT_SCHEMA_VERSION})", path=path)
        if t.offset != width or t.width < 1 or (t.kind in ("multiclass", "multilabel", "count") and len(t.labels) != t.width):
            raise CheckpointError(f"card target {t.name!r} has an inconsistent output slice", path=path)
        if t.kind == "regression" and not (t.std > 0):
            raise CheckpointError(f"card target {t.name!r} has a non-positive std", path=path)
        width += t.width
    if card["out_dim"] != width:
        raise CheckpointError(f"card out_dim {card['out_dim']} does not match its targets' width {width}", path=path)
    names = {t.name for t in targets}
    if "states" in card and not _valid_states(card["states"], names):
        raise CheckpointError("card states must give a count ≥ 2 and, for every target, one of them that serves it "
                              "(each serving some target)", path=path)
    if "ensemble" in card:
        ens = card["ensemble"]
        members = ens.get("members") if isinstance(ens, dict) else None
        states = ens.get("states") if isinstance(ens, dict) else None
        if (isinstance(members, bool) or not isinstance(members, int) or members < 2 or not isinstance(states, list)
                or len(states) != members or not all(s is None or _valid_states(s, names) for s in states)):
            raise CheckpointError("card ensemble must give its number of members (≥ 2) and, for each member, null or its "
                                  "states (as the card's own states)", path=path)
        if version < ENSEMBLE_SCHEMA_VERSION:
            raise CheckpointError(f"card holds an ensemble but says schema_version {version} "
                                  f"(an ensemble needs {ENSEMBLE_SCHEMA_VERSION})", path=path)
        if "states" in card:
            raise CheckpointError("card holds both states and an ensemble (an ensemble's members give their own states)", path=path)
    if card.get("weights_dtype", "float32") not in WEIGHTS_DTYPES:
        raise CheckpointError(f"card weights_dtype {card['weights_dtype']!r} is not one of {', '.join(WEIGHTS_DTYPES)}", path=path)
    tensors = card["tensors"]
    if not isinstance(tensors, dict) or not all(
        isinstance(s, list) and all(isinstance(d, int) for d in s) for s in tensors.values()
    ):
        raise CheckpointError("card tensors must map names to shapes", path=path)


def _valid_states(states: Any, names: set[str]) -> bool:
    """A card's ``states``: a count ≥ 2 and, for every target, the index of the state serving it (each serving one)."""
    count = states.get("count") if isinstance(states, dict) else None
    serve = states.get("targets") if isinstance(states, dict) else None
    return not (isinstance(count, bool) or not isinstance(count, int) or count < 2 or not isinstance(serve, dict)
                or set(serve) != names
                or not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < count for k in serve.values())
                or set(serve.values()) != set(range(count)))
