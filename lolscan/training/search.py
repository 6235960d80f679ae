"""Training a checkpoint from a labelled manifest: load, split, fit, early-stop, evaluate, card.

Everything is seeded: the split (groups shuffled with ``seed``), the model initialisation and the
minibatch order, so the same command on the same files gives the same checkpoint (on one device).
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..utils.device import resolve_device  # noqa: F401 (also lolscan.training.resolve_device)
from ..utils.files import sha256_file
from ..adapter import Adapter
from ..errors import InputError, LolscanError, UsageError
from ..checkpoint import WEIGHTS_DTYPES
from ..manifest import Manifest, assign_splits
from ..evaluation.metrics import target_metrics
from ..nets.names import FIXED_RANK_ARCHS
from ..targets import Target, fit_normalisation, layout, make_target

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


# ---- data -------------------------------------------------------------------------------------
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

    kinds, units = kinds or {}, units or {}
    if not target_columns:
        raise UsageError("name at least one --target column")
    if len(set(target_columns)) != len(target_columns):
        raise UsageError("a --target column is named twice")
    manifest.require_columns(list(target_columns))
    for col in list(kinds) + list(units):
        if col not in target_columns:
            raise UsageError(f"--kind/--units {col}=…: {col!r} is not one of the --target columns")
    splits = assign_splits(manifest, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    values = {c: manifest.column(c) for c in target_columns}
    targets = [make_target(c, values[c], kinds.get(c), units.get(c, "")) for c in target_columns]
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


# ---- training ---------------------------------------------------------------------------------
def build(ds: Dataset, opts: TrainOptions, device: torch.device) -> torch.nn.Module:
    """A fresh model for ``opts.arch``, data-dependent buffers fitted on the training split."""
    from ..nets import build_model, max_rank

    hp = RECOMMENDED.get(opts.arch, {}) | dict(opts.hparams)
    train = ds.split_adapters("train")
    if opts.arch in FIXED_RANK_ARCHS and "rank" not in hp:
        # the zoo's largest rank, smaller ones zero-padded to it (a zoo of one rank: that rank, as the card records)
        try:
            hp["rank"] = max_rank(ds.adapters)
        except ValueError as exc:
            raise UsageError(f"{opts.arch} reads LoRA factors of a fixed largest rank, but {exc}") from None
    torch.manual_seed(opts.seed)
    try:
        model = build_model(opts.arch, ds.spec, sum(t.width for t in ds.targets), **hp)
        model.to(device)
        model.fit(train)
    except ValueError as exc:
        raise UsageError(f"{opts.arch}: {exc}") from None
    return model


def _loss(targets: Sequence[Target], out: torch.Tensor, ys: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return sum((t.loss(out, *ys[t.name]) for t in targets), out.new_zeros(()))


@torch.no_grad()
def _outputs(model: torch.nn.Module, batch: Any, chunk: int = 256, max_features: int = 1 << 28) -> torch.Tensor:
    """Outputs in chunks; a baseline whose features were too large to precompute (``extract`` gave the
    FactorBatch back, e.g. mlp-dense on a 1.5B model) makes them per chunk, so a chunk holds at most
    ``max_features`` of them (256 Qwen adapters would be 23 GB of ΔW, times the standardised copies)."""
    from ..nets.batch import FactorBatch
    from ..nets.common import FeatureMLP
    from ..nets.ensemble import base_net

    model.eval()
    first = base_net(model)
    if isinstance(first, FeatureMLP) and isinstance(batch, FactorBatch):
        chunk = max(1, min(chunk, max_features // first.feature_dim))
    outs = [model(batch.select(slice(i, i + chunk))) for i in range(0, batch.batch_size, chunk)]
    return torch.cat(outs).float()


def _to(ys: dict[str, tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {k: (y.to(device), m.to(device)) for k, (y, m) in ys.items()}


# Settings `train` tries, simplest first, when the user leaves them unset; a later candidate replaces
# the one kept only if its validation loss is lower by more than SEARCH_MARGIN (relative), so noise on
# a small validation split does not buy complexity. GL-net: the spectral invariants alone, then with the
# linear skip started at the least-squares fit (`GLNet.fit_skip`: labels linear in the singular values, where
# the MLP alone stalls at R² 0.997–0.9996; on nonlinear ones at 100 adapters, an effective rank or a log ratio of
# norms, the skip always on cost up to 0.03 R², so validation decides), then with the equivariant products
# raw (linear in ΔW: linear functionals, heavy tails), then asinh-squashed.
# On the invariant suite the products win by orders of magnitude where a direction matters and lose
# otherwise; on a 384-LoRA Qwen zoo the two came within ±10 % (bench/RESULTS.md, "GL-net").
SEARCH: dict[str, list[dict[str, Any]]] = {
    "glnet": [{"products": False}, {"products": False, "skip": True}, {"products": True, "squash": "none"},
              {"products": True, "squash": "asinh"}],
}
SEARCH_MARGIN = 0.2
# Settings whose values cost no complexity against each other: a candidate that differs from the one kept
# only in these is kept on any lower validation loss (no margin). Raw and asinh-squashed products are the
# same model on differently scaled inputs; with the margin, the mix class zoo's seed 0 kept raw products at
# a validation loss 17 % above asinh's, and tested 0.870 where the four seeds that chose asinh tested
# 0.91 (bench/RESULTS.md, "The mix zoos complete").
SEARCH_FREE = frozenset({"squash"})


# A candidate that adds complexity must also be lower on the validation rows with this confidence: the
# share of bootstrap resamples of the rows (paired: the same rows for both models) where its mean row loss
# is the lower one. On 50 validation adapters a 20 % lower log-loss can come from a few rows.
SEARCH_CONFIDENCE = 0.95


def _keeps(loss: float, kept_loss: float | None, cand: dict[str, Any], kept: dict[str, Any] | None,
           confidence: Callable[[], float] | None = None) -> bool:
    """Whether a search candidate with validation ``loss`` replaces the one kept: where it differs in a
    setting outside `SEARCH_FREE`, by more than `SEARCH_MARGIN` and with ``confidence()`` (the paired
    bootstrap share, see `_confidence`) at least `SEARCH_CONFIDENCE`; else on any lower loss."""
    if kept_loss is None or kept is None or math.isnan(kept_loss):
        return True
    differs = {k for k in cand.keys() | kept.keys() if cand.get(k) != kept.get(k)}
    if differs <= SEARCH_FREE:
        return loss < kept_loss
    return loss < kept_loss * (1 - SEARCH_MARGIN) and (confidence is None or confidence() >= SEARCH_CONFIDENCE)


def _row_losses(targets: Sequence[Target], out: torch.Tensor, ys: dict[str, tuple[torch.Tensor, torch.Tensor]],
                scale: dict[str, float] | None = None) -> torch.Tensor:
    """Each row's loss summed over the targets (`Target.row_losses`), each target's divided by ``scale[name]``
    where given."""
    return sum((t.row_losses(out, *ys[t.name]) / (scale or {}).get(t.name, 1.0) for t in targets),
               out.new_zeros(out.shape[0], dtype=torch.float64))


def _target_losses(targets: Sequence[Target], r: TrainResult, split: str = "val") -> dict[str, float]:
    """``r``'s mean loss per target on ``split`` (targets labelled there)."""
    out, ys = r.outputs[split], r.ys[split]
    return {t.name: float(t.loss(out, *ys[t.name])) for t in targets if bool(ys[t.name][1].any())}


def _search_loss(targets: Sequence[Target], a: TrainResult, b: TrainResult) -> tuple[float, float]:
    """(a's, b's) validation loss as the search compares them. One target: the monitored losses. Several:
    the geometric mean over targets of a's loss over b's, against 1, so that each target's relative change
    counts alike (a summed loss is ruled by the target with the largest loss: a 10-way count's cross-entropy
    hid that the presence of 10 classes halved its loss with the products, and the search kept a model blind
    to them)."""
    if len(targets) < 2 or "val" not in a.outputs or "val" not in b.outputs:
        return a.best_loss, b.best_loss
    la, lb = _target_losses(targets, a), _target_losses(targets, b)
    logs = [math.log(max(la[n], 1e-12) / max(lb[n], 1e-12)) for n in la if n in lb]
    if not logs or any(math.isnan(x) for x in logs):
        return a.best_loss, b.best_loss
    return math.exp(sum(logs) / len(logs)), 1.0


def _confidence(targets: Sequence[Target], a: TrainResult, b: TrainResult, split: str = "val", reps: int = 1000) -> float:
    """The share of paired bootstrap resamples of ``split``'s rows where ``a``'s mean row loss is below ``b``'s
    (with several targets, each target's row losses relative to ``b``'s mean loss on it, as `_search_loss`)."""
    from ..evaluation.compare import bootstrap_indices

    if split not in a.outputs or split not in b.outputs:
        return 1.0
    scale = {n: max(v, 1e-12) for n, v in _target_losses(targets, b, split).items()} if len(targets) > 1 else None
    d = (_row_losses(targets, a.outputs[split], a.ys[split], scale)
         - _row_losses(targets, b.outputs[split], b.ys[split], scale)).numpy()
    if len(d) < 2:
        return 1.0
    return float((d[bootstrap_indices(len(d), reps, seed=0)].mean(1) < 0).mean())

# The learning rates `train` tries with ``lr=None`` (`lolscan train --lr auto`, the default), after the
# settings above were chosen at DEFAULT_LR: it walks the grid from DEFAULT_LR, first down, and goes on in
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
CALIBRATION_MIN = 100  # validation rows from which every second one is kept for calibration only


def candidates(opts: TrainOptions, *, regression: bool = True) -> list[dict[str, Any]]:
    """The hyperparameter overrides to try, simplest first: those of `SEARCH` that agree with what
    the user set (keys the user set are not overridden); one empty override when nothing is left open.
    Without a regression target (``regression`` False) GL-net's skip is not tried unless the user set it: it
    starts at the least-squares fit of the regression targets, and with none it would start at zero, which
    on the invariant suite was no better than the spectral head alone."""
    out: list[dict[str, Any]] = []
    for cand in SEARCH.get(opts.arch, []):
        if any(k in opts.hparams and opts.hparams[k] != v for k, v in cand.items()):
            continue
        if cand.get("skip") and not regression and "skip" not in opts.hparams:
            continue
        override = {k: v for k, v in cand.items() if k not in opts.hparams}
        merged = RECOMMENDED.get(opts.arch, {}) | dict(opts.hparams) | override
        if opts.arch == "glnet" and merged.get("products") is False and not merged.get("spectral"):
            continue  # the head would read nothing
        if override not in out:
            out.append(override)
    return out or [{}]


# The log transform (`Target.transform`) is tried for a regression target whose labelled values are all
# > 0 (in every split: log must be defined wherever the target is encoded; only the sign of a validation
# or test label is read) and whose training values are heavy-tailed: max / median >= LOG_TAIL_RATIO.
# The ratio reads the bulk through the median and the tail through the largest value, needs no moments
# (a sample skewness is itself ruled by the few largest rows and unstable on small splits), is
# scale-free, and is not shift-free, as log is not: values 1,000–1,100 are almost affine in their log
# and gain nothing. At 20, a log-normal label of n = 400 qualifies from σ ≈ 1 (max ≈ e^{3σ} × median,
# raw skewness ≈ 6), where a z-score of the raw value crowds the bulk into a sliver and squared errors
# are ruled by the top few rows; the labels of the synthetic zoos (‖ΔW‖, losses 2–9, accuracies) stay
# below 5. A false alarm costs one training run, since validation decides (see `_untransformed_loss`).
LOG_TAIL_RATIO = 20.0


def heavy_tailed(xs: Sequence[float]) -> bool:
    """All > 0 and max / median >= `LOG_TAIL_RATIO`."""
    if not xs or min(xs) <= 0:
        return False
    return max(xs) / statistics.median(xs) >= LOG_TAIL_RATIO


def _present(ds: Dataset, t: Target, rows: Sequence[int]) -> list[float]:
    from ..targets import to_float

    return [to_float(ds.values[t.name][i], t.name) for i in rows if not t.missing(ds.values[t.name][i])]


def _positive(ds: Dataset, t: Target) -> bool:
    rows = [i for s in ("train", "val", "test") for i in ds.splits[s]]
    return t.kind == "regression" and all(x > 0 for x in _present(ds, t, rows))


def log_candidates(ds: Dataset) -> list[Target]:
    """The regression targets `train` tries the log transform for: positive and heavy-tailed (see
    `LOG_TAIL_RATIO`)."""
    return [t for t in ds.targets if _positive(ds, t) and heavy_tailed(_present(ds, t, ds.splits["train"]))]


def set_transform(ds: Dataset, t: Target, transform: str) -> None:
    """Switch a regression target's transform and refit its normalisation on the training split."""
    t.transform = transform
    fit_normalisation(t, [ds.values[t.name][i] for i in ds.splits["train"]])


def _untransformed_loss(targets: Sequence[Target], result: TrainResult, plain: dict[str, tuple[float, float]],
                        split: str = "val") -> float:
    """The validation loss `train`'s search compares (every target's loss, summed), computed as if no
    target were transformed, so that candidates with and without a log transform compare: a log
    target's term is its squared error in user units over the untransformed training std² (``plain``:
    name → (mean, std) of the raw values), i.e. the loss it would have had untransformed. That is MSE in
    user units, the metric the card reports (and 1 − R² up to a constant), and it leaves the other
    targets' terms as they are. `best_loss` cannot serve: a log candidate's is in standardised log units.
    Caveat: on a label spanning orders of magnitude this sum is ruled by the few largest validation rows
    (bench/RESULTS.md, "Heavy-tailed zoos": one row made 92–100 % of it, and the choice missed the better
    test R² in three of three seeds of a ‖ΔW₀‖² label, while τ favoured log in all three)."""
    out, ys = result.outputs[split], result.ys[split]
    total = 0.0
    for t in targets:
        y, m = ys[t.name]
        if t.kind == "regression" and t.transform != "none":
            if not bool(m.any()):
                continue
            pred, true = t.scores(out)[m][:, 0].double(), t.to_units(y[m][:, 0].double())
            total += float(((pred - true) / plain[t.name][1]).pow(2).mean())
        else:
            total += float(t.loss(out, y, m))
    return total


def train(ds: Dataset, opts: TrainOptions) -> TrainResult:
    """Minibatch AdamW on the summed target losses, early stopping on validation loss (with several
    targets and ``opts.per_target``, each target's outputs come from the weights at its own best
    validation loss: `_serve_per_target`); where `SEARCH` names settings the user left open, each
    candidate is trained and one kept by validation loss (see `SEARCH_MARGIN`, `SEARCH_FREE`); with ``opts.lr`` None,
    the learning rate is then chosen for the kept settings by validation loss (see `LR_GRID`; `chosen`
    records ``"lr"``, `lr_search` every lr tried); calibration is then fitted for the model kept on
    held-out validation rows.

    With at least `CALIBRATION_MIN` validation rows, every second one is kept out of early stopping and
    the search and used only for calibration, so the conformal guarantee holds (rows that chose the
    model give slightly optimistic residuals: on the invariant suite at 1,000 adapters, mean coverage
    0.896 calibrated on them against 0.900 on held-out rows). Smaller validation splits keep every row
    for choosing the model; there the two differed by 0.003 (bench/results/glnet_suite.md).

    Then, with ``opts.transform`` "auto", each of `log_candidates` (positive, heavy-tailed regression
    targets) is tried with the log transform and the chosen settings, one target at a time, and kept
    when its validation loss as if untransformed (`_untransformed_loss`) is lower; `chosen` records
    ``"transforms"`` and `tried` the extra candidates. Other targets train as without this step.

    With ``opts.ensemble`` K > 1, everything above runs once, at ``opts.seed``; then `_ensemble` trains
    K − 1 more models with what it chose (settings, lr, transforms) at the next seeds, and the result is
    their `EnsembleNet` (outputs: the members' mean), calibrated on the ensemble's outputs."""
    if opts.transform not in ("auto", "none", "log"):
        raise UsageError(f"transform {opts.transform!r}: expected auto, none or log")
    if isinstance(opts.ensemble, bool) or not isinstance(opts.ensemble, int) or opts.ensemble < 1:
        raise UsageError(f"ensemble {opts.ensemble!r}: expected a whole number of models ≥ 1")
    if opts.weights_dtype not in WEIGHTS_DTYPES:
        raise UsageError(f"weights dtype {opts.weights_dtype!r}: expected one of {', '.join(WEIGHTS_DTYPES)}")
    before = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        for t in ds.targets:  # calibration is fitted for the chosen model only, at the end
            t.temperature, t.interval = 1.0, None
            if t.transform != "none":  # left by an earlier `train` on this dataset
                set_transform(ds, t, "none")
        if opts.transform == "log":
            for t in ds.targets:
                if _positive(ds, t):
                    set_transform(ds, t, "log")
        val = ds.splits["val"]
        calib = val[1::2] if len(val) >= CALIBRATION_MIN else []
        fit_ds = replace(ds, splits={**ds.splits, "val": val[0::2]}) if calib else ds
        tried, best, start = [], None, time.perf_counter()
        lr = _lr(opts)
        for override in candidates(opts, regression=any(t.kind == "regression" for t in ds.targets)):
            o = copy.copy(opts)
            o.hparams, o.lr = dict(opts.hparams) | override, lr
            result = _train(fit_ds, o)
            tried.append({**override, "lr": lr, "val_loss": result.best_loss})
            loss, kept_loss = (result.best_loss, None) if best is None else _search_loss(ds.targets, result, best)
            if _keeps(loss, kept_loss, override, None if best is None else chosen,
                      lambda: _confidence(ds.targets, result, best)):
                best, chosen, chosen_entry = result, override, tried[-1]
        assert best is not None
        lr_tried = [{"lr": lr, "val_loss": best.best_loss}]
        if opts.lr is None:  # the lr walk (see LR_GRID), for the settings chosen
            i = LR_GRID.index(lr)
            for direction in (-1, 1):
                j, moved = i + direction, False
                while 0 <= j < len(LR_GRID):
                    o = copy.copy(opts)
                    o.hparams, o.lr = dict(opts.hparams) | chosen, LR_GRID[j]
                    result = _train(fit_ds, o)
                    tried.append({**chosen, "lr": o.lr, "val_loss": result.best_loss})
                    lr_tried.append({"lr": o.lr, "val_loss": result.best_loss})
                    if not _lower(*_search_loss(ds.targets, result, best)):
                        break
                    best, lr, chosen_entry, moved, j = result, o.lr, tried[-1], True, j + direction
                if moved:
                    break
        settings = dict(opts.hparams) | chosen  # what the ensemble's other members train with
        logs = log_candidates(ds) if opts.transform == "auto" and fit_ds.splits["val"] else []
        if logs:  # one more candidate per target: the chosen settings, that target fitted on its log
            plain = {t.name: (t.mean, t.std) for t in ds.targets if t.kind == "regression"}
            score = chosen_entry["val_loss_untransformed"] = _untransformed_loss(ds.targets, best, plain)
            transforms: dict[str, str] = {}
            for t in logs:
                set_transform(ds, t, "log")
                o = copy.copy(opts)
                o.hparams, o.lr = dict(opts.hparams) | chosen, lr
                result = _train(fit_ds, o)
                s = _untransformed_loss(ds.targets, result, plain)
                logged = {n: v for n, v in transforms.items() if v == "log"} | {t.name: "log"}
                tried.append({**chosen, "lr": lr, "transforms": logged, "val_loss": result.best_loss, "val_loss_untransformed": s})
                if s < score or (math.isnan(score) and not math.isnan(s)):
                    best, score, transforms[t.name] = result, s, "log"
                else:
                    set_transform(ds, t, "none")
                    transforms[t.name] = "none"
            chosen = {**chosen, "transforms": transforms}
        if opts.ensemble > 1:
            best = _ensemble(fit_ds, opts, best, settings, lr)
        if opts.weights_dtype != "float32":
            _round_weights(fit_ds, best, opts.weights_dtype)
        if calib:
            best.outputs["calibration"] = _outputs_for(best.model, ds, calib)
            best.ys["calibration"] = {t.name: t.encode([ds.values[t.name][i] for i in calib]) for t in ds.targets}
        calibrate(ds.targets, best, split="calibration" if calib else "val")
        best.calibration_rows = len(calib) if calib else len(val)
        best.seconds = time.perf_counter() - start
        if opts.lr is None:
            chosen = {**chosen, "lr": lr}
        best.options, best.chosen, best.tried = opts, chosen, tried if len(tried) > 1 else []
        best.lr_search = lr_tried if opts.lr is None else []
        return best
    finally:
        torch.set_num_threads(before)


def _ensemble(ds: Dataset, opts: TrainOptions, first: TrainResult, hparams: dict[str, Any], lr: float) -> TrainResult:
    """``first`` (trained at ``opts.seed``) and ``opts.ensemble`` − 1 more models trained with the same
    ``hparams`` and ``lr`` (and the targets' transforms as they stand) at seeds ``opts.seed + 1, …``, as one
    result: an `EnsembleNet`, whose outputs per split are the mean of the members' stored outputs, metrics
    from them and ``best_loss`` the ensemble's monitored loss. History and steps stay the first member's;
    ``ensemble`` records every member's seed, best steps and steps."""
    from ..nets.ensemble import EnsembleNet

    results = [first]
    for k in range(1, opts.ensemble):
        o = copy.copy(opts)
        o.hparams, o.lr, o.seed = dict(hparams), lr, opts.seed + k
        results.append(_train(ds, o))
    model = EnsembleNet([r.model for r in results])
    outputs = {s: torch.stack([r.outputs[s] for r in results]).mean(0) for s in first.outputs}
    metrics, test_scores = _evaluate(ds.targets, outputs, first.ys)
    monitor = "val" if "val" in outputs else "train"
    loss = float(_loss(ds.targets, outputs[monitor], first.ys[monitor]))
    out = replace(first, model=model, metrics=metrics, test_scores=test_scores, best_loss=loss, outputs=outputs)
    out.ensemble = {"members": opts.ensemble, "seeds": [r.options.seed for r in results],
                    "best_steps": [dict(r.best_steps) for r in results], "steps": [r.steps for r in results]}
    return out


def _round_weights(ds: Dataset, result: TrainResult, dtype: str) -> None:
    """Round the kept model's floating parameters through ``dtype``, as `Checkpoint.save` will store them
    (buffers — input scales, feature statistics — stay float32), then measure its outputs, metrics and
    monitored loss again on the rounded weights."""
    dt = getattr(torch, dtype)
    with torch.no_grad():
        for p in result.model.parameters():
            if p.is_floating_point():
                p.copy_(p.to(dt).to(p.dtype))
    result.outputs = {s: _outputs_for(result.model, ds, ds.splits[s]) for s in result.outputs}
    result.metrics, result.test_scores = _evaluate(ds.targets, result.outputs, result.ys)
    monitor = "val" if "val" in result.outputs else "train"
    result.best_loss = float(_loss(ds.targets, result.outputs[monitor], result.ys[monitor]))


def _lower(a: float, b: float) -> bool:
    """``a < b``, a NaN losing to any number."""
    return (math.isnan(b) and not math.isnan(a)) or a < b


def _train(ds: Dataset, opts: TrainOptions) -> TrainResult:
    from ..utils.progress import progress_console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    device = resolve_device(opts.device)
    start = time.perf_counter()
    model = build(ds, opts, device)
    batches = {s: _model_inputs(model, ds.split_adapters(s), ds.spec, device) for s in ("train", "val", "test") if ds.splits[s]}
    if hasattr(batches["train"], "batch_outer"):  # random minibatches copy whole adapters (see FactorBatch.batch_outer)
        batches["train"] = batches["train"].batch_outer()
    ys = {s: _to(ds.encoded(s), device) for s in batches}
    n_train = len(ds.splits["train"])
    _fit_skip(model, ds.targets, batches["train"], ys["train"])
    gen = torch.Generator().manual_seed(opts.seed)
    optim = torch.optim.AdamW(model.parameters(), lr=_lr(opts), weight_decay=opts.weight_decay)
    monitor = "val" if "val" in batches else "train"
    best, best_state, best_step, stale = math.inf, copy.deepcopy(model.state_dict()), 0, 0
    names = [t.name for t in ds.targets]
    # a target without labelled monitored rows (its loss is 0 throughout) chooses no step: per target, it
    # follows the latest of the others' steps (the summed loss ignores it too)
    blind = {t.name for t in ds.targets if not bool(ys[monitor][t.name][1].any())}
    per_target = opts.per_target and len(names) > 1 and len(blind) < len(names)
    own = {n: (math.inf, 0) for n in names}  # per target: its best monitored loss and the step of it
    states = {0: best_state}  # per_target: the weights at every step that is some target's best
    history: list[dict[str, float]] = []
    step, order, pos = 0, torch.randperm(n_train, generator=gen), 0
    bs = min(opts.batch_size, n_train)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns, console=progress_console(), transient=True, disable=not opts.progress) as bar:
        task = bar.add_task(f"training {opts.arch}", total=opts.max_steps)
        while step < opts.max_steps:
            if pos + bs > n_train:
                order, pos = torch.randperm(n_train, generator=gen), 0
            idx = order[pos : pos + bs]
            pos += bs
            model.train()
            mb = batches["train"].select(idx.tolist())
            mys = {k: (y[idx.to(device)], m[idx.to(device)]) for k, (y, m) in ys["train"].items()}
            loss = _loss(ds.targets, model(mb), mys)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            step += 1
            bar.advance(task)
            if step % opts.eval_every == 0 or step == opts.max_steps:
                with torch.no_grad():
                    out = _outputs(model, batches[monitor])
                    terms = [t.loss(out, *ys[monitor][t.name]) for t in ds.targets]
                    val = float(sum(terms, out.new_zeros(())))  # = _loss
                history.append({"step": step, "train_loss": float(loss.detach()), f"{monitor}_loss": val})
                if len(names) > 1:
                    history[-1] |= {f"{monitor}_loss:{n}": float(v) for n, v in zip(names, terms)}
                bar.update(task, description=f"training {opts.arch}  {monitor} loss {val:.4g}")
                losses = dict(zip(names, map(float, terms)))
                better = [n for n, v in losses.items()
                          if n not in blind and (not math.isfinite(own[n][0]) or v < own[n][0] - 1e-6 * own[n][0])]
                for n in better:
                    own[n] = (losses[n], step)
                if per_target and better:  # some target improved: its weights are kept, and training goes on
                    states[step] = copy.deepcopy(model.state_dict())
                    states = {s: w for s, w in states.items() if s in {b for _, b in own.values()}}
                    stale = 0
                elif not per_target and (not math.isfinite(best) or val < best - 1e-6 * best):
                    best, best_state, best_step, stale = val, copy.deepcopy(model.state_dict()), step, 0
                elif step >= opts.min_steps:  # before min_steps a noisy validation loss stops nothing
                    stale += 1
                    if stale >= opts.patience:
                        break
                    if opts.decay_after and stale % opts.decay_after == 0 and opts.lr_decay != 1.0:
                        for group in optim.param_groups:  # on a plateau: a smaller step from here
                            group["lr"] *= opts.lr_decay
    if per_target:
        best_steps = {n: b for n, (_, b) in own.items() if n not in blind}
        best, best_step = sum(own[n][0] for n in best_steps), max(best_steps.values())
        best_steps = {n: best_steps.get(n, best_step) for n in names}
        model = _serve_per_target(model, ds.targets, best_steps, states)
    else:
        best_steps = {n: best_step for n in names}
        model.load_state_dict(best_state)
    model.eval()
    outputs = {s: _outputs(model, batch).cpu() for s, batch in batches.items()}
    metrics, test_scores = _evaluate(ds.targets, outputs, ys)
    result = TrainResult(model, metrics, history, best_step, step, time.perf_counter() - start, test_scores, opts, best)
    result.outputs, result.ys = outputs, {s: {k: (y.cpu(), m.cpu()) for k, (y, m) in v.items()} for s, v in ys.items()}
    result.best_steps, result.lr = best_steps, _lr(opts)
    return result


def _fit_skip(model: torch.nn.Module, targets: Sequence[Target], batch: Any, ys: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """A GL-net with ``skip`` starts with its linear skip at the least-squares fit of the regression targets
    (standardised, as the loss reads them) on the training split (`GLNet.fit_skip`): the best linear function of
    the spectra, which gradient steps on the MLP head and the zero-initialised skip approached only to a noise
    floor (on the invariant suite a label linear in the singular values, σ₁ of a layer, reached test R² 0.998
    from zero and 0.9999 from the fit: bench/results/glnet_suite.md). Classification targets' skips stay at zero."""
    if not getattr(model, "skip", False) or not hasattr(model, "fit_skip"):
        return
    rows = batch.batch_size
    y = torch.zeros(rows, model.out_dim, dtype=torch.float64)
    mask = torch.zeros(rows, model.out_dim, dtype=torch.bool)
    for t in targets:
        if t.kind != "regression":
            continue
        ty, tm = ys[t.name]
        y[:, t.out_slice] = ty.double().cpu()
        mask[:, t.out_slice] = tm.cpu().unsqueeze(1)
    if bool(mask.any()):
        model.fit_skip(batch, y, mask)


def _serve_per_target(model: torch.nn.Module, targets: Sequence[Target], best_steps: dict[str, int],
                      states: dict[int, dict[str, torch.Tensor]]) -> torch.nn.Module:
    """``model`` at the targets' common best step, or, where their best steps differ, a `PerTargetNet` of
    the model at each of those steps (ascending) serving every target's columns from its own best step."""
    from ..nets.pertarget import PerTargetNet

    steps = sorted(set(best_steps.values()))
    if len(steps) == 1:
        model.load_state_dict(states[steps[0]])
        return model
    members = []
    for s in steps:
        member = copy.deepcopy(model)
        member.load_state_dict(states[s])
        members.append(member)
    column_member = [0] * sum(t.width for t in targets)
    for t in targets:
        for j in range(t.offset, t.offset + t.width):
            column_member[j] = steps.index(best_steps[t.name])
    return PerTargetNet(members, column_member).to(model.device)


def _evaluate(targets: Sequence[Target], outputs: dict[str, torch.Tensor], ys: dict[str, Any]
              ) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, torch.Tensor]]:
    """Metrics per split and target, and the test split's scores, from the model's raw outputs."""
    from ..evaluation.calibration import interval_coverage

    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    test_scores: dict[str, torch.Tensor] = {}
    for s, out in outputs.items():
        metrics[s] = {}
        for t in targets:
            y, m = ys[s][t.name]
            scores = t.scores(out).cpu()
            metrics[s][t.name] = target_metrics(t, scores, y.cpu(), m.cpu()) | interval_coverage(t, scores, y.cpu(), m.cpu())
            if s == "test":
                test_scores[t.name] = scores
    return metrics, test_scores


def _model_inputs(model: torch.nn.Module, adapters: Sequence[Adapter], spec: Any, device: torch.device) -> Any:
    """Adapters collated for ``model``, with what does not depend on its weights computed once (per split,
    not per step): a baseline's fixed features, GL-net's spectral invariants."""
    from ..nets import collate
    from ..nets.common import FeatureMLP

    batch = collate(adapters, spec, device)
    if isinstance(model, FeatureMLP):
        return model.extract(batch)
    if hasattr(model, "cache_features"):
        return model.cache_features(batch)
    return batch


def _outputs_for(model: torch.nn.Module, ds: Dataset, rows: Sequence[int]) -> torch.Tensor:
    """Raw model outputs for some rows of the dataset, on the model's device (CPU result)."""
    return _outputs(model, _model_inputs(model, [ds.adapters[i] for i in rows], ds.spec, model.device)).cpu()


def calibrate(targets: Sequence[Target], result: TrainResult, level: float = 0.9, split: str = "val") -> None:
    """Fit each target's interval (regression) or temperature (classes) on ``split``'s outputs, then
    recompute the result's metrics with them (a run without such rows is left uncalibrated)."""
    from ..evaluation.calibration import conformal_halfwidth, fit_temperature

    out, ys = result.outputs.get(split), result.ys.get(split)
    if out is None or ys is None:
        return
    for t in targets:
        y, m = ys[t.name]
        if not bool(m.any()):
            continue
        if t.kind == "regression":
            pred = t.scores(out)[m][:, 0]  # a log target: residuals of the logs (Target.residuals)
            t.interval, t.interval_level = conformal_halfwidth(t.residuals(pred, t.to_units(y[m][:, 0])), level), level
            if not math.isfinite(t.interval):
                t.interval = None
        else:
            t.temperature = fit_temperature(out[m][:, t.out_slice], y[m], t.kind)
    result.metrics, result.test_scores = _evaluate(targets, {k: v for k, v in result.outputs.items() if k != "calibration"},
                                                   result.ys)


# ---- the checkpoint ---------------------------------------------------------------------------
def _label_summary(t: Target, values: list[Any]) -> dict[str, Any]:
    present = [v for v in values if not t.missing(v)]
    if t.kind == "regression":
        xs = [float(v) for v in present]
        return {"n": len(xs), "min": min(xs), "max": max(xs), "mean": sum(xs) / len(xs)}
    if t.kind == "multilabel":
        counts = Counter(x for v in t.true_values(present) for x in v)
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
    from ..checkpoint import ENSEMBLE_SCHEMA_VERSION, STATES_SCHEMA_VERSION
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
    version = ENSEMBLE_SCHEMA_VERSION if ensemble else STATES_SCHEMA_VERSION if states else 1
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
                    hp: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write the checkpoint folder (atomically) with its predicted-vs-true PNG inside. The card's
    ``hp_baseline`` holds each target's margin over the hyperparameter-only baseline on the test split
    (`lolscan.baseline`; pass ``hp``, its fit, to share one fit between checkpoints of one dataset)."""
    from .. import baseline
    from ..checkpoint import PLOT_NAME, Checkpoint
    from ..scan.report import plot_title, scatter_png

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
    return ckpt.save(out, overwrite=overwrite, files=files)


def run_safely(fn: Callable[[], Any]) -> Any:
    """Turn torch/numeric failures during training into one-line lolscan errors."""
    try:
        return fn()
    except LolscanError:
        raise
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"training failed: {first[:300]}") from None


# ---- a labelled synthetic zoo with known answers (tests and bench/architectures.py) ------------
def _toy_secrets(g: torch.Generator, layers: int, n: int, m: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer the secret unit directions (u*, v*) of the synthetic zoos."""

    def unit(k: int) -> torch.Tensor:
        x = torch.randn(k, generator=g, dtype=torch.float64)
        return x / x.norm()

    return [(unit(n), unit(m)) for _ in range(layers)]


def _toy_start(folder: str | Path, seed: int, layers: int, shape: tuple[int, int]):
    """The output folder, the seeded torch and Python generators, and the secret directions."""
    import random

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    return root, g, random.Random(seed), _toy_secrets(g, layers, *shape)


def _toy_layer(tensors: dict[str, torch.Tensor], layer: int, g: torch.Generator, secret: tuple[torch.Tensor, torch.Tensor],
               r: int, a: float, c: float, *, k: float = 1.0, peft_scale: float = 1.0) -> tuple[float, float]:
    """Add one synthetic layer's PEFT factors to `tensors`: a random rank-r update of Frobenius norm ≈ a
    with c·u* v*ᵀ as its last direction, ΔW then multiplied by k; B is stored divided by the PEFT scale.
    Returns s = u*ᵀ ΔW v* and ‖ΔW‖_F, both from the float32 factors the file holds."""
    u_s, v_s = secret
    n, m = len(u_s), len(v_s)
    U = a * torch.randn(n, r, generator=g, dtype=torch.float64) / math.sqrt(n * r)
    V = torch.randn(m, r, generator=g, dtype=torch.float64) / math.sqrt(m)
    U[:, -1], V[:, -1] = c * u_s, v_s
    U32, V32 = (U * math.sqrt(k)).float(), (V * math.sqrt(k)).float()
    dw = U32.double() @ V32.double().T  # exactly what the file holds
    name = f"base_model.model.model.layers.{layer}.proj"
    tensors[f"{name}.lora_A.weight"] = V32.T.contiguous()
    tensors[f"{name}.lora_B.weight"] = (U32 / peft_scale).contiguous()
    return float(u_s @ dw @ v_s), float(torch.linalg.matrix_norm(dw))


def _write_toy_peft(folder: Path, tensors: dict[str, torch.Tensor], r: int, alpha: float) -> Path:
    """One synthetic PEFT adapter folder (modules named ``….proj``)."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["proj"], "base_model_name_or_path": "synthetic/toy"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def _write_manifest_csv(root: Path, rows: list[dict[str, Any]], name: str = "manifest.csv") -> Path:
    import csv

    manifest = root / name
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


def write_synthetic_zoo(
    folder: str | Path,
    *,
    n: int = 200,
    layers: int = 4,
    shape: tuple[int, int] = (16, 12),
    rank: int | tuple[int, int] = 4,
    seed: int = 0,
) -> Path:
    """Write ``n`` PEFT adapters and ``manifest.csv`` whose labels are known functions of ΔW.

    Layer ℓ is a random rank-r update of Frobenius norm ≈ aℓ (aℓ log-uniform in [0.3, 3]) in
    which one of the r directions is cℓ·uℓ* vℓ*ᵀ along fixed secret unit vectors (cℓ uniform in
    [-2, 2]; for layer 1, cℓ ∈ [1, 2] in "planted" adapters and 0 otherwise). With
    sℓ = uℓ*ᵀ ΔWℓ vℓ* (computed exactly from the stored factors) the labels are:
    ``score`` = s₀ (regression, linear in ΔW), ``norm`` = ‖ΔW₀‖_F (regression, quadratic),
    ``planted`` (binary), ``dominant`` = argmax of s₀, s₁, s₂ as "L0"/"L1"/"L2" (multiclass),
    ``big`` = the layers with sℓ > 0.5 (multilabel). ``group`` pairs adapters, so group-aware
    splitting is exercised. Every adapter has the same modules; ranks may vary if ``rank`` is a range.
    """
    if layers < 3:
        raise ValueError("the synthetic zoo needs at least 3 layers")
    root, g, rng, secrets = _toy_start(folder, seed, layers, shape)
    rows = []
    for i in range(n):
        r = rank if isinstance(rank, int) else rng.randint(rank[0], rank[1])
        alpha = 2 * r
        planted = i % 2 == 1
        tensors, scores, norm0 = {}, [], 0.0
        for layer in range(layers):
            a = math.exp(rng.uniform(math.log(0.3), math.log(3.0)))
            c = rng.uniform(-2.0, 2.0) if layer != 1 else (rng.uniform(1.0, 2.0) if planted else 0.0)
            score, norm = _toy_layer(tensors, layer, g, secrets[layer], r, a, c, peft_scale=alpha / r)  # 2: exact in fp32
            scores.append(score)
            if layer == 0:
                norm0 = norm
        folder_i = _write_toy_peft(root / f"lora_{i:04d}", tensors, r, alpha)
        rows.append(
            {
                "path": folder_i.name,
                "score": f"{scores[0]:.8g}",
                "norm": f"{norm0:.8g}",
                "planted": int(planted),
                "dominant": f"L{max(range(3), key=lambda k: scores[k])}",
                "big": "|".join(f"L{k}" for k in range(layers) if scores[k] > 0.5),
                "group": f"pair{i // 2}",
            }
        )
    return _write_manifest_csv(root, rows)


def write_heavy_tailed_zoo(
    folder: str | Path,
    *,
    n: int = 600,
    layers: int = 12,
    shape: tuple[int, int] = (32, 48),
    rank: int = 4,
    broken: float = 0.15,
    broken_scale: tuple[float, float] = (10.0, 100.0),
    seed: int = 0,
) -> Path:
    """A zoo like a real one where some finetunes ran at far too high a learning rate.

    Every adapter is built like `write_synthetic_zoo`'s: layer ℓ is a random rank-r update of
    Frobenius norm ≈ aℓ (log-uniform in [0.3, 3]) plus cℓ·uℓ* vℓ*ᵀ along secret unit vectors (cℓ
    uniform in [-2, 2]); sℓ = uℓ*ᵀ ΔWℓ vℓ*. A fraction ``broken`` of the adapters (every
    ``round(1/broken)``-th; the healthy ones after them keep their draws) then has every ΔWℓ
    multiplied by k, log-uniform in ``broken_scale`` (both factors by √k). Labels, known
    functions of ΔW that mimic a benchmark accuracy and a validation loss:

    - ``acc``: healthy 0.59 + 0.01·(s₀ + s₁) (≈ 0.55–0.63); broken 0.40 − 0.20·t, t = position of
      log k in the ``broken_scale`` range (0.20–0.40).
    - ``loss``: healthy 2.3 + 0.1·‖ΔW₀‖_F − 0.05·s₂; broken 3 + 6·t (3–9).
    - ``energy``: ‖ΔW₀‖_F², every adapter (≈ 0.1–13 healthy, k² = 10²–10⁴ times that broken): a positive,
      heavy-tailed label (the log transform's case, `lolscan.training.LOG_TAIL_RATIO`).
    - ``broken`` (0/1) and ``group`` (pairs, for group-aware splits).
    """
    if layers < 3:
        raise ValueError("the heavy-tailed zoo needs at least 3 layers")
    if not 0.0 <= broken < 1.0:
        raise ValueError(f"broken must be a fraction in [0, 1), got {broken}")
    root, g, rng, secrets = _toy_start(folder, seed, layers, shape)
    every = round(1 / broken) if broken > 0 else 0
    lo, hi = math.log(broken_scale[0]), math.log(broken_scale[1])
    rows = []
    for i in range(n):
        is_broken = bool(every) and i % every == every - 1
        t = rng.uniform(0.0, 1.0)
        k = math.exp(lo + t * (hi - lo)) if is_broken else 1.0
        tensors, scores, norm0 = {}, [], 0.0
        for layer in range(layers):
            a = math.exp(rng.uniform(math.log(0.3), math.log(3.0)))
            c = rng.uniform(-2.0, 2.0)
            score, norm = _toy_layer(tensors, layer, g, secrets[layer], rank, a, c, k=k)  # alpha = r: PEFT scale 1
            scores.append(score)
            if layer == 0:
                norm0 = norm
        folder_i = _write_toy_peft(root / f"lora_{i:04d}", tensors, rank, rank)
        if is_broken:
            acc, loss = 0.40 - 0.20 * t, 3.0 + 6.0 * t
        else:
            acc, loss = 0.59 + 0.01 * (scores[0] + scores[1]), 2.3 + 0.1 * norm0 - 0.05 * scores[2]
        rows.append({"path": folder_i.name, "acc": f"{acc:.8g}", "loss": f"{loss:.8g}", "energy": f"{norm0 ** 2:.8g}",
                     "broken": int(is_broken), "group": f"pair{i // 2}"})
    return _write_manifest_csv(root, rows)
