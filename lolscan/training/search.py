"""`train`: what it chooses by validation loss, each candidate a training run (`lolscan.training.loop`) —
the architecture's settings (`SEARCH`), the learning rate (`LR_GRID`) and the log transform of heavy-tailed
regression targets (`LOG_TAIL_RATIO`) — then an ensemble's other members, the weights rounded to the
precision the checkpoint stores, and calibration on held-out validation rows."""
from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from ..errors import UsageError
from ..checkpoint import WEIGHTS_DTYPES
from ..targets import Target, fit_normalisation, label_range
from .data import Dataset
from .loop import _evaluate, _loss, _outputs_for, _train, calibrate, round_parameters
from .options import LR_GRID, RECOMMENDED, TrainOptions, TrainResult, _lr


# Settings `train` tries, simplest first, when the user leaves them unset; a later candidate replaces
# the one kept only if its validation loss is lower by more than SEARCH_MARGIN (relative), so noise on
# a small validation split does not buy complexity. GL-net: the spectral invariants alone, then with the
# whole-spectrum summaries (`GLNet` ``summaries``: the energy past the top singular values and two scale-free
# shapes, √ of the effective and of the stable rank; on the invariant suite effective and stable ranks go from
# R² 0.76–0.91 to 0.99–1.00, but on the mix class zoo's class count, 56 modules, they cost 0.035 R² and raise the
# validation loss, so validation decides), then with those and the
# linear skip started at the least-squares fit (`GLNet.fit_skip`: labels linear in the singular values, where
# the MLP alone stalls at R² 0.997–0.9996; on nonlinear ones at 100 adapters, an effective rank or a log ratio of
# norms, the skip always on cost up to 0.03 R², so validation decides), then with the equivariant products
# raw (linear in ΔW: linear functionals, heavy tails), then asinh-squashed.
# On the invariant suite the products win by orders of magnitude where a direction matters and lose
# otherwise; on a 384-LoRA Qwen zoo the two came within ±10 % (bench/RESULTS.md, "GL-net"). The margin was
# 20 % until the confidence rule below guarded against validation noise; at 10 % every cell of the invariant suite
# stays the same (30 task-size cells), and of 168 recorded real-zoo searches the 12 it changes all move from the
# spectra to the products, which tested better in each row that had runs of both (bench/search_margin.py;
# bench/RESULTS.md, "A 10 % margin for the search").
SEARCH: dict[str, list[dict[str, Any]]] = {
    "glnet": [{"products": False, "summaries": False}, {"products": False, "summaries": True},
              {"products": False, "summaries": True, "skip": True},
              {"products": True, "squash": "none"}, {"products": True, "squash": "asinh"}],
}
SEARCH_MARGIN = 0.1
# Settings whose values cost no complexity against each other: a candidate that differs from the one kept
# only in these is kept on any lower validation loss (no margin). Raw and asinh-squashed products are the
# same model on differently scaled inputs; with the margin, the mix class zoo's seed 0 kept raw products at
# a validation loss 17 % above asinh's, and tested 0.870 where the four seeds that chose asinh tested
# 0.91 (bench/RESULTS.md, "The mix zoos complete").
SEARCH_FREE = frozenset({"squash"})


# A candidate that adds complexity must also be lower on the validation rows with this confidence: the
# share of bootstrap resamples of the rows (paired: the same rows for both models) where its mean row loss
# is the lower one. On 50 validation adapters a 10–20 % lower log-loss can come from a few rows.
SEARCH_CONFIDENCE = 0.95


def _keeps(loss: float, kept_loss: float | None, cand: dict[str, Any], kept: dict[str, Any] | None,
           confidence: Callable[[], float] | None = None, *, margin: float | None = None) -> bool:
    """Whether a search candidate with validation ``loss`` replaces the one kept: where it differs in a
    setting outside `SEARCH_FREE`, by more than ``margin`` (`SEARCH_MARGIN` unless given: bench/search_margin.py
    replays recorded searches at other margins) and with ``confidence()`` (the paired bootstrap share, see
    `_confidence`) at least `SEARCH_CONFIDENCE`; else on any lower loss."""
    if kept_loss is None or kept is None or math.isnan(kept_loss):
        return True
    differs = {k for k in cand.keys() | kept.keys() if cand.get(k) != kept.get(k)}
    if differs <= SEARCH_FREE:
        return loss < kept_loss
    margin = SEARCH_MARGIN if margin is None else margin
    return loss < kept_loss * (1 - margin) and (confidence is None or confidence() >= SEARCH_CONFIDENCE)


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


def set_transform(ds: Dataset, t: Target, transform: str, clamp: bool = True) -> None:
    """Switch a regression target's transform and refit its normalisation on the training split (and its
    range: `set_range`)."""
    t.transform = transform
    fit_normalisation(t, [ds.values[t.name][i] for i in ds.splits["train"]])
    set_range(ds, t, clamp)


def set_range(ds: Dataset, t: Target, clamp: bool = True) -> None:
    """The range `Target.scores` keeps predictions in: the training split's labels, with ``clamp`` and for a
    target fitted on its values. Not for one fitted on its log: a heavy tail's training maximum is no bound
    on the next LoRA's (on y = exp(3‖ΔW₀‖) a test label of 10,830 past a training maximum of 6,482 was predicted
    at 7,976; kept in range, test R² fell from 0.93 to 0.85)."""
    on = clamp and t.transform == "none"
    t.low, t.high = label_range(t, [ds.values[t.name][i] for i in ds.splits["train"]]) if on else (None, None)


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
    their `EnsembleNet` (outputs: the members' mean), calibrated on the ensemble's outputs.

    With ``opts.refit``, the model (every member) is then trained again on the training and validation rows
    (`lolscan.training.refit`); calibration and the validation metrics stay those of the models before it."""
    if opts.transform not in ("auto", "none", "log"):
        raise UsageError(f"transform {opts.transform!r}: expected auto, none or log")
    if isinstance(opts.ensemble, bool) or not isinstance(opts.ensemble, int) or opts.ensemble < 1:
        raise UsageError(f"ensemble {opts.ensemble!r}: expected a whole number of models ≥ 1")
    if opts.refit and not ds.splits["val"]:
        raise UsageError("--refit trains again on the validation rows once they have chosen the model, "
                         "and this split has none (set --val-fraction, or give the split column val rows)")
    if opts.weights_dtype not in WEIGHTS_DTYPES:
        raise UsageError(f"weights dtype {opts.weights_dtype!r}: expected one of {', '.join(WEIGHTS_DTYPES)}")
    before = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        for t in ds.targets:  # calibration is fitted for the chosen model only, at the end
            t.temperature, t.interval = 1.0, None
            if t.transform != "none":  # left by an earlier `train` on this dataset (sets the range too)
                set_transform(ds, t, "none", opts.clamp)
            else:
                set_range(ds, t, opts.clamp)
        if opts.transform == "log":
            for t in ds.targets:
                if _positive(ds, t):
                    set_transform(ds, t, "log", opts.clamp)
        val = ds.splits["val"]
        calib = val[1::2] if len(val) >= CALIBRATION_MIN else []
        fit_ds = replace(ds, splits={**ds.splits, "val": val[0::2]}) if calib else ds
        tried, best, start = [], None, time.perf_counter()
        chosen: dict[str, Any] = {}  # the kept candidate's override, and its entry in `tried`
        chosen_entry: dict[str, Any] = {}
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
                set_transform(ds, t, "log", opts.clamp)
                o = copy.copy(opts)
                o.hparams, o.lr = dict(opts.hparams) | chosen, lr
                result = _train(fit_ds, o)
                s = _untransformed_loss(ds.targets, result, plain)
                logged = {n: v for n, v in transforms.items() if v == "log"} | {t.name: "log"}
                tried.append({**chosen, "lr": lr, "transforms": logged, "val_loss": result.best_loss, "val_loss_untransformed": s})
                if s < score or (math.isnan(score) and not math.isnan(s)):
                    best, score, transforms[t.name] = result, s, "log"
                else:
                    set_transform(ds, t, "none", opts.clamp)
                    transforms[t.name] = "none"
            chosen = {**chosen, "transforms": transforms}
        if opts.ensemble > 1:
            best = _ensemble(fit_ds, opts, best, settings, lr)
        if opts.weights_dtype != "float32":
            _round_weights(fit_ds, best, opts.weights_dtype)
        if calib:
            best.outputs["calibration"] = _outputs_for(best.model, ds, calib)
            best.ys["calibration"] = {t.name: t.encode([ds.values[t.name][i] for i in calib]) for t in ds.targets}
        if opts.refit:  # calibration and validation outputs stay the models' before it (lolscan.training.refit)
            from .refit import refit

            best = refit(ds, opts, best, settings, lr)
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
                    "best_steps": [dict(r.best_steps) for r in results], "steps": [r.steps for r in results],
                    "lr_cuts": [list(r.lr_cuts) for r in results]}
    return out


def _round_weights(ds: Dataset, result: TrainResult, dtype: str) -> None:
    """Round the kept model's floating parameters through ``dtype``, as `Checkpoint.save` will store them
    (buffers — input scales, feature statistics — stay float32), then measure its outputs, metrics and
    monitored loss again on the rounded weights."""
    round_parameters(result.model, dtype)
    result.outputs = {s: _outputs_for(result.model, ds, ds.splits[s]) for s in result.outputs}
    result.metrics, result.test_scores = _evaluate(ds.targets, result.outputs, result.ys)
    monitor = "val" if "val" in result.outputs else "train"
    result.best_loss = float(_loss(ds.targets, result.outputs[monitor], result.ys[monitor]))


def _lower(a: float, b: float) -> bool:
    """``a < b``, a NaN losing to any number."""
    return (math.isnan(b) and not math.isnan(a)) or a < b
