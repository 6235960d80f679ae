"""The labelled dataset a run trains on: a manifest's adapters read (threads overlap the I/O), its rows
split, and its target columns parsed and normalised on the training split."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ..adapter import Adapter
from ..errors import InputError, UsageError
from ..manifest import Manifest, assign_splits
from ..targets import Target, fit_normalisation, layout, make_target


@dataclass
class Dataset:
    """A manifest's adapters, targets (normalisation fitted on train) and split indices."""

    manifest: Manifest
    adapters: list[Adapter]
    targets: list[Target]
    values: dict[str, list[Any]]  # target name -> raw column values, row order
    splits: dict[str, list[int]]
    spec: Any  # LayerSpec
    base_model: str
    split_method: str
    seed: int
    excluded: list[str] = field(default_factory=list)  # sources left out: their factors hold NaN/Inf

    def encoded(self, split: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        idx = self.splits[split]
        return {t.name: t.encode([self.values[t.name][i] for i in idx]) for t in self.targets}

    def split_adapters(self, split: str) -> list[Adapter]:
        return [self.adapters[i] for i in self.splits[split]]


def load_all(
    sources: Sequence[str],
    *,
    workers: int = 4,
    allow_pickle: bool = False,
    on_done: Callable[[], None] | None = None,
    source_options: dict[str, Any] | None = None,
) -> list[Adapter]:
    """Read every adapter (threads overlap the I/O); the first unreadable one raises its one-line error."""
    import lolscan

    def read(src: str) -> Adapter:
        try:
            return lolscan.load(src, allow_pickle=allow_pickle, **(source_options or {}))
        finally:
            if on_done:
                on_done()

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(read, sources))


def guess_base_model(adapters: Sequence[Adapter]) -> str:
    from ..formats.family import guess_family

    counts = Counter(guess_family(a) for a in adapters)
    if len(counts) == 1:
        return next(iter(counts))
    return "mixed: " + ", ".join(f"{k} ({v})" for k, v in counts.most_common())


def prepare(
    manifest: Manifest,
    target_columns: Sequence[str],
    *,
    kinds: dict[str, str] | None = None,
    units: dict[str, str] | None = None,
    counts: dict[str, tuple[str, float]] | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    workers: int = 4,
    allow_pickle: bool = False,
    base_model: str | None = None,
    progress: bool = True,
    source_options: dict[str, Any] | None = None,
) -> Dataset:
    from ..formats.build import layer_finite
    from ..nets import LayerSpec

    kinds, units, counts = kinds or {}, units or {}, counts or {}
    if not target_columns:
        raise UsageError("name at least one --target column")
    if len(set(target_columns)) != len(target_columns):
        raise UsageError("a --target column is named twice")
    for col in list(kinds) + list(units) + list(counts):
        if col not in target_columns:
            raise UsageError(f"--kind/--units/--count {col}=…: {col!r} is not one of the --target columns")
    column = {c: counts[c][0] if c in counts else c for c in target_columns}  # a count reads its source's label sets
    manifest.require_columns(list(dict.fromkeys(column.values())))
    splits = assign_splits(manifest, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    values = {c: manifest.column(column[c]) for c in target_columns}
    targets = [make_target(c, values[c], kinds.get(c), units.get(c, ""), counts.get(c)) for c in target_columns]
    layout(targets)

    from ..utils.progress import progress_console
    from rich.progress import Progress

    with Progress(console=progress_console(), transient=True, disable=not progress) as bar:
        task = bar.add_task("reading adapters", total=len(manifest.rows))
        adapters = load_all(
            [r.source for r in manifest.rows],
            workers=workers,
            allow_pickle=allow_pickle,
            on_done=lambda: bar.advance(task),
            source_options=source_options,
        )
    # a diverged finetune leaves NaN/Inf factors: one such adapter would turn every loss into NaN
    bad = {i for i, a in enumerate(adapters) if not all(layer_finite(layer) for layer in a.layers.values())}
    splits = {k: [i for i in v if i not in bad] for k, v in splits.items()}
    if bad and not splits["train"]:
        raise InputError(f"every adapter of the training split holds NaN/Inf factors ({len(bad)} such adapters, "
                         f"e.g. {manifest.rows[min(bad)].source})", path=manifest.path)
    for t in targets:
        fit_normalisation(t, [values[t.name][i] for i in splits["train"]])
        if not any(not t.missing(values[t.name][i]) for i in splits["train"]):
            raise UsageError(f"target {t.name!r} has no labelled rows in the training split")
    try:
        spec = LayerSpec.from_adapters(adapters)
    except ValueError as exc:
        raise UsageError(f"{manifest.path}: the adapters do not share one base model: {exc}") from None
    method = "column" if manifest.has_split else ("group" if manifest.has_group else "random")
    return Dataset(manifest, adapters, targets, values, splits, spec, base_model or guess_base_model(adapters), method, seed,
                   excluded=[manifest.rows[i].source for i in sorted(bad)])
