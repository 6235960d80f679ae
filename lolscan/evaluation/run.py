"""What `lolscan eval` does between parsing its options and rendering its table: choose the manifest
rows of a split, score them with a checkpoint and compute each target's metrics.

Nothing here prints: notes and adapters that could not be scored reach the caller through callbacks.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..targets import Target


def scores_from_predictions(target: Target, preds: list[dict[str, Any]]) -> Any:
    """Report predictions back to the score tensor ``Target.scores`` gives (values / probabilities)."""
    import torch

    rows = []
    for p in preds:
        if target.kind == "regression":
            rows.append([p["value"]])
        elif target.kind == "binary":
            rows.append([p["probability"]])
        else:
            rows.append([p["probabilities"][lab] for lab in target.labels])
    return torch.tensor(rows, dtype=torch.float64).reshape(len(preds), -1)


def rows_for_split(m: Any, split: str, card: dict[str, Any], path: Path) -> tuple[list[Any], str]:
    """The manifest rows of ``split`` and a few words on how they were chosen.

    A split column is used as it is. Without one, a manifest the checkpoint was trained on (same
    SHA-256 as its card records) is dealt again with the card's seed and the default fractions, as
    `train` dealt it (checked against the split sizes on the card); any other manifest is unseen
    data, so `test` evaluates all of its rows.
    """
    from ..manifest import assign_splits
    from ..utils.files import sha256_file

    if split == "all":
        return m.rows, "all rows, training rows included"
    if m.has_split:
        return [r for r in m.rows if r.split == split], f"split {split} (split column)"
    data = card.get("training_data") or {}
    if data.get("manifest_sha256") != sha256_file(path):
        if split == "test":
            return m.rows, "all rows (no split column; the checkpoint was trained on another manifest)"
        raise UsageError(f"{path} has no split column and is not the manifest the checkpoint was trained on: "
                         f"--split {split} means nothing here (use test or all)")
    idx = assign_splits(m, seed=int((card.get("training") or {}).get("seed", 0)))
    want, excluded = data.get("splits") or {}, int(data.get("excluded_non_finite") or 0)
    if any(not (0 <= len(idx[s]) - int(want.get(s, -1)) <= excluded) for s in ("val", "test")):
        raise UsageError(f"{path} is the checkpoint's training manifest but its split cannot be dealt again "
                         f"(trained with other --val-fraction/--test-fraction?); add a split column or pass --split all")
    return [m.rows[i] for i in idx[split]], f"split {split}, dealt again as train did (seed {card.get('training', {}).get('seed', 0)})"


@dataclass
class EvalResult:
    ckpt: Any
    rows: list[Any]  # the manifest rows evaluated
    split_note: str  # how they were chosen
    targets: list[Target]  # the checkpoint's targets the manifest has columns for
    scored: int  # rows scored
    failures: list[dict[str, Any]]  # report rows of adapters that could not be scored
    metrics: dict[str, dict[str, Any]]  # by target name


def evaluate(manifest: Path, model: str | None, split: str, *, device: str = "auto", batch_size: int = 32, workers: int = 2, allow_pickle: bool = False,
             source_options: Any = None, note: Callable[[str], None] = lambda text: None,
             failure: Callable[[dict[str, Any], str], None] = lambda row, model_name: None) -> EvalResult:
    """Checkpoint ``model``'s metrics on the ``split`` rows of ``manifest``; ``note`` gets plain one-line notes,
    ``failure`` each adapter that could not be scored and the checkpoint's name (after the scan)."""
    from ..manifest import read_manifest
    from ..scan.discovery import Found
    from ..scan.run import open_checkpoint
    from ..scan.scoring import ScoreOptions, Scorer, auto_processes

    m = read_manifest(manifest)
    ckpt = open_checkpoint(model, device)
    rows, split_note = rows_for_split(m, split, ckpt.card, manifest)
    if not rows:
        raise UsageError(f"{manifest}: no rows to evaluate ({split_note})")
    note(f"evaluating {len(rows)} of {len(m.rows)} rows: {split_note}")
    targets = [t for t in ckpt.targets if t.column in m.label_columns]  # a count is scored on its source's label sets
    if not targets:
        raise UsageError(f"{manifest} has none of the checkpoint's target columns ({', '.join(t.column for t in ckpt.targets)})")
    for t in ckpt.targets:
        if t not in targets:
            note(f"note: no column {t.column!r} in the manifest; not evaluated")
    opts = ScoreOptions(batch_size=batch_size, workers=workers, allow_pickle=allow_pickle, processes=auto_processes(len(rows)),
                        source_options=source_options)
    scored = list(Scorer(ckpt, opts).score([Found(r.source) for r in rows]))
    failures = [s for s in scored if s["status"] != "ok"]
    for s in failures:
        failure(s, ckpt.name)
    ok = [(r, s) for r, s in zip(rows, scored) if s["status"] == "ok"]
    metrics = {t.name: target_metrics_of(t, ok) for t in targets}
    return EvalResult(ckpt=ckpt, rows=rows, split_note=split_note, targets=targets, scored=len(ok), failures=failures, metrics=metrics)


def target_metrics_of(t: Target, ok: list[tuple[Any, dict[str, Any]]]) -> dict[str, Any]:
    """One target's metrics over the (manifest row, report row) pairs that were scored."""
    from .metrics import target_metrics

    if not ok:
        return {"n": 0}
    y, mask = t.encode([r.labels.get(t.column) for r, _ in ok])
    scores = scores_from_predictions(t, [s["predictions"][t.name] for _, s in ok])
    from .calibration import interval_coverage

    return target_metrics(t, scores, y, mask) | interval_coverage(t, scores, y, mask)
