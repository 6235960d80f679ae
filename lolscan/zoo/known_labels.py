"""Labels of an earlier build of the same zoo (`lolscan zoo build --labels-from`).

On a big base model labelling costs more than training (Qwen2.5-Coder-1.5B: 12 s of ARC-C and validation
loss per group of 48 adapters against 9 s of training), and a build is deterministic for its recipe and seed.
So a zoo whose manifest is at hand can be rebuilt at training cost, without taking its labels on trust:

- every adapter's hyperparameters, split and sources must equal that manifest's row (checked before any
  training: another recipe or seed fails at once);
- every group's training losses and finite flags must match it (free: training runs anyway);
- every ``check_every``-th group is labelled as usual and its labels must match too.

The labels written are the earlier manifest's, so the rebuilt manifest carries the same labels.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, UsageError
from ..utils.files import sha256_file

# fields the recipe and seed decide before training: must be equal, not close
SPEC_KEYS = ("split", "sources", "rank", "alpha", "lr", "steps", "batch_size", "dropout", "weight_decay",
             "mixed_rank")
TRAIN_KEYS = ("finite", "train_loss_first", "train_loss_last")


def label_keys(val_sources: list[str], eval_names: list[str], correct: bool = False) -> list[str]:
    """Manifest columns the label pass writes, in the order the builder writes them (``correct``: with
    each eval's per-question correctness, recipe ``store_correct``)."""
    keys = ["val_loss", *(f"val_loss_{s}" for s in val_sources)]
    for name in eval_names:
        keys += [f"{name}_acc", f"{name}_gold_logprob"] + ([f"{name}_correct"] if correct else [])
    return keys


def _close(a: Any, b: Any, tol: float) -> tuple[bool, float]:
    """(equal within tol, |a - b|); NaN equals NaN (a diverged adapter's labels)."""
    fa, fb = float(a), float(b)
    if math.isnan(fa) or math.isnan(fb):
        return math.isnan(fa) and math.isnan(fb), 0.0
    if math.isinf(fa) or math.isinf(fb):
        return fa == fb, 0.0
    return abs(fa - fb) <= tol, abs(fa - fb)


@dataclass
class KnownLabels:
    path: Path
    rows: dict[str, dict[str, Any]]
    sha256: str
    check_every: int = 8
    tolerance: float = 2e-3
    max_diff: float = 0.0  # largest |difference| seen in a checked label or a training loss

    @classmethod
    def load(cls, path: str | Path, check_every: int = 8, tolerance: float = 2e-3) -> "KnownLabels":
        path = Path(path)
        if check_every < 1:
            raise UsageError(f"--check-every must be at least 1, not {check_every}")
        if not path.is_file():
            raise InputError(f"{path}: no such manifest")
        rows: dict[str, dict[str, Any]] = {}
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    rows[row["id"]] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise InputError(f"{path}: line {n} is not a manifest row with an id") from None
        if not rows:
            raise InputError(f"{path}: no manifest rows")
        return cls(path, rows, sha256_file(path), check_every, tolerance)

    def provenance(self) -> dict[str, Any]:
        return {"manifest": str(self.path), "sha256": self.sha256, "check_every": self.check_every,
                "tolerance": self.tolerance}

    def check_specs(self, fields: dict[str, dict[str, Any]], keys: tuple[str, ...] = SPEC_KEYS) -> None:
        """`fields`: adapter id -> its `keys` values (SPEC_KEYS for a language zoo) as this build will write them."""
        for aid, f in fields.items():
            old = self.rows.get(aid)
            if old is None:
                raise InputError(f"{self.path}: no row for {aid}; it is not a manifest of this recipe")
            for key in keys:
                if old.get(key) != f[key]:
                    raise InputError(f"{self.path}: {aid} has {key} = {old.get(key)!r}, this recipe gives "
                                     f"{f[key]!r}; it is not a manifest of this recipe and seed")

    def holds(self, ids: list[str]) -> bool:
        """Does the manifest hold every one of these adapters (a group it can give the labels of)? A build
        stopped early wrote only its first groups."""
        return all(i in self.rows for i in ids)

    def checks(self, group_index: int) -> bool:
        """Is this group (its position in the recipe's group order) labelled and compared?"""
        return group_index % self.check_every == 0

    def labels(self, aid: str, keys: list[str], measured: dict[str, float] | None) -> dict[str, Any]:
        """The earlier build's labels of `aid`; `measured` (a checked group) must match them."""
        old = self.rows[aid]
        missing = [k for k in keys if k not in old]
        if missing:
            raise InputError(f"{self.path}: {aid} has no {', '.join(missing)}")
        if measured is not None:
            for k in keys:
                if not k.endswith("_correct"):  # a bitstring: its accuracy is compared, a near tie may flip
                    self._compare(aid, k, measured[k], old[k], "measured here")
        return {k: old[k] for k in keys}

    def check_training(self, aid: str, row: dict[str, Any]) -> None:
        old = self.rows[aid]
        if old.get("finite") != row["finite"]:
            raise InputError(f"{self.path}: {aid} is {'' if old.get('finite') else 'not '}finite there but "
                             f"{'' if row['finite'] else 'not '}here; this build does not reproduce that zoo")
        for k in TRAIN_KEYS[1:]:
            if k in old:
                self._compare(aid, k, row[k], old[k], "trained here")

    def _compare(self, aid: str, key: str, here: Any, there: Any, how: str) -> None:
        ok, diff = _close(here, there, self.tolerance)
        if not ok:
            raise InputError(f"{self.path}: {aid} {key} = {there}, {how} {here} (tolerance {self.tolerance}); "
                             "this build does not reproduce that zoo")
        self.max_diff = max(self.max_diff, diff)
