"""One training run: a fresh model (`build`), minibatch AdamW with early stopping on validation loss
(`_train`; per target with several targets), the metrics of the weights kept (`_evaluate`) and their
calibration (`calibrate`)."""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ..utils.device import resolve_device
from ..adapter import Adapter
from ..errors import LolscanError, UsageError
from ..evaluation.metrics import target_metrics
from ..nets.names import FIXED_RANK_ARCHS
from ..targets import Target
from .data import Dataset
from .options import RECOMMENDED, TrainOptions, TrainResult, _lr


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


def _minibatches(n: int, bs: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless minibatch row indices: a fresh permutation of the ``n`` rows each epoch (drawn from ``gen``),
    taken ``bs`` at a time; an epoch's tail shorter than ``bs`` is skipped."""
    order, pos = torch.randperm(n, generator=gen), 0
    while True:
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=gen), 0
        yield order[pos : pos + bs]
        pos += bs


def _step(model: torch.nn.Module, optim: torch.optim.Optimizer, targets: Sequence[Target], batch: Any,
          ys: dict[str, tuple[torch.Tensor, torch.Tensor]], idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One optimiser step on the rows ``idx`` of the training inputs ``batch`` and labels ``ys``; its loss."""
    model.train()
    mys = {k: (y[idx.to(device)], m[idx.to(device)]) for k, (y, m) in ys.items()}
    loss = _loss(targets, model(batch.select(idx.tolist())), mys)
    optim.zero_grad(set_to_none=True)
    loss.backward()
    optim.step()
    return loss


def _cut_lr(optim: torch.optim.Optimizer, factor: float) -> None:
    for group in optim.param_groups:
        group["lr"] *= factor


def _progress(opts: TrainOptions) -> Any:
    """The transient training bar on stderr (off with ``opts.progress`` False)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..utils.progress import progress_console

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    return Progress(*columns, console=progress_console(), transient=True, disable=not opts.progress)


def _train(ds: Dataset, opts: TrainOptions) -> TrainResult:
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
    cuts: list[int] = []  # the steps after which the lr was cut (a refit replays them: lolscan.training.refit)
    step, order = 0, _minibatches(n_train, min(opts.batch_size, n_train), gen)
    with _progress(opts) as bar:
        task = bar.add_task(f"training {opts.arch}", total=opts.max_steps)
        while step < opts.max_steps:
            loss = _step(model, optim, ds.targets, batches["train"], ys["train"], next(order), device)
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
                        _cut_lr(optim, opts.lr_decay)  # on a plateau: a smaller step from here
                        cuts.append(step)
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
    result.best_steps, result.lr, result.lr_cuts = best_steps, _lr(opts), cuts
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


def round_parameters(model: torch.nn.Module, dtype: str) -> None:
    """Round ``model``'s floating parameters through ``dtype`` in place (buffers stay as they are)."""
    dt = getattr(torch, dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.copy_(p.to(dt).to(p.dtype))


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


def run_safely(fn: Callable[[], Any]) -> Any:
    """Turn torch/numeric failures during training into one-line lolscan errors."""
    try:
        return fn()
    except LolscanError:
        raise
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"training failed: {first[:300]}") from None
