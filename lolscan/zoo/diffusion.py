"""Build a diffusion LoRA zoo: DreamBooth-style finetunes of a text-to-image base, K at once, CLIP-scored.

Layout of an output folder (as for language zoos)::

    zoo.json            the resolved recipe, its digest, the data source, the base model, the base's labels
    manifest.jsonl      one row per finished adapter
    adapters/lora-NNNNN/pytorch_lora_weights.safetensors   a diffusers LoRA, as save_lora_weights writes it

Training: `MultiLoRALinear` on the denoiser's attention linears (``to_q``, ``to_k``, ``to_v``, ``to_out.0``
matched by suffix), the batch laid out adapter-major; each adapter learns noise prediction (MSE, the
scheduler's prediction type) on its own images and captions, with its own lr, steps, batch and weight
decay (`StackedAdamW`). Labels: the CLIP score of images generated with each adapter from the recipe's
fixed prompts and seeds — the same images ``pipe.load_lora_weights(file); pipe(prompt,
generator=torch.Generator().manual_seed(seed))`` gives — plus what the recipe drew (classes, style,
dataset size, prompt template, hyperparameters) and, from a source with ``attributes(style)`` (``fonts``),
the style's attributes as ``attr_<name>`` columns.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..errors import UsageError
from ..utils.files import atomic_write
from .build import MANIFEST, BuildReport, check_resume, read_zoo_rows, sorted_metadata, time_to_stop
from .clipscore import ClipScorer
from .diffusion_base import DiffusionBase, load_base
from .diffusion_recipe import DiffusionRecipe, DiffusionSpec, sample_specs
from .images import open_source
from .known_labels import KnownLabels
from .multilora import (
    StackedAdamW,
    adapter_seed,
    all_finite,
    eject,
    extract,
    extract_magnitude,
    find_targets,
    init_factors,
    inject,
    to_device,
    trainable,
)
from .ranks import commit_rows
from .recipe import group_specs

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


# ---- training ------------------------------------------------------------------------------------
def _training_scheduler(base: DiffusionBase):
    """DDPM noise with the base's betas (what diffusers' DreamBooth script trains with)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(base.scheduler.config)


def encoded_dataset(base: DiffusionBase, spec: DiffusionSpec, recipe: DiffusionRecipe, source) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter's finetuning images in the denoiser's input space (8 at a time) and its captions' token
    states: what a LoRA trains on, made once before its steps."""
    imgs, _, caps = spec.dataset(recipe, source, base.resolution)
    z = torch.cat([base.to_model_space(imgs[i:i + 8]) for i in range(0, len(imgs), 8)])
    return z, base.encode_text(caps)


def train_group(base: DiffusionBase, targets: list[str], specs: list[DiffusionSpec], recipe: DiffusionRecipe,
                source) -> tuple[dict, torch.Tensor]:
    """Train len(specs) LoRAs at once; returns the injected modules and the per-step loss [max_steps, K]
    (NaN after an adapter finished)."""
    dev, k = base.device, len(specs)
    unet = base.unet
    mods = inject(unet, targets, k, max(s.rank for s in specs), dora=recipe.use_dora)
    data = []
    for slot, s in enumerate(specs):
        init_factors(mods, slot, recipe.seed, s.index, {n: s.rank for n in targets})
        for mod in mods.values():
            mod.scaling[slot] = s.alpha / s.rank
            if recipe.use_dora:
                mod.init_magnitude(slot)
        data.append(encoded_dataset(base, s, recipe, source))
    params = trainable(mods)
    for p in params:
        p.requires_grad_(True)
    opt = StackedAdamW(params, k)
    sched = _training_scheduler(base)
    n_t = sched.config.num_train_timesteps
    pred_type = sched.config.prediction_type
    steps = torch.tensor([s.steps for s in specs])
    b_max, max_steps = max(s.batch_size for s in specs), int(steps.max())
    picks = [np.random.default_rng(np.random.SeedSequence([recipe.seed, s.index, 1])).integers(
        0, s.dataset_size, size=(s.steps, s.batch_size)) for s in specs]
    gens = [torch.Generator().manual_seed(adapter_seed(recipe.seed, s.index, 4)) for s in specs]
    lr0 = torch.tensor([s.lr for s in specs], dtype=torch.float64)
    wd = torch.tensor([s.weight_decay for s in specs], dtype=torch.float64)
    losses = torch.full((max_steps, k), float("nan"))
    unet.train()
    for t in range(max_steps):
        active = steps > t
        xs, ts, noises, ehs, weight = [], [], [], [], torch.zeros(k * b_max)
        for slot, s in enumerate(specs):
            idx = torch.from_numpy(picks[slot][min(t, s.steps - 1)])
            z, e = data[slot]
            # every adapter draws its noise and timesteps each step, active or not: its stream never
            # depends on its group's length
            noise = torch.randn((len(idx), *z.shape[1:]), generator=gens[slot])
            tt = torch.randint(0, n_t, (len(idx),), generator=gens[slot])
            rows = [j % len(idx) for j in range(b_max)]
            xs.append(z[idx[rows]])
            noises.append(noise[rows])
            ts.append(tt[rows])
            ehs.append(e[idx[rows]])
            weight[slot * b_max: slot * b_max + len(idx)] = float(active[slot])
        z0 = torch.cat(xs).float()
        noise, tt = torch.cat(noises).to(dev), torch.cat(ts).to(dev)
        noisy = sched.add_noise(z0, noise.to(z0), tt)
        target = noise if pred_type == "epsilon" else sched.get_velocity(z0, noise.to(z0), tt)
        pred = unet(noisy.to(base.dtype), tt, encoder_hidden_states=torch.cat(ehs)).sample
        per_row = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
        w = to_device(weight, dev)
        per_adapter = (per_row * w).view(k, b_max).sum(1) / w.view(k, b_max).sum(1).clamp(min=1)
        per_adapter.sum().backward()
        lr = lr0 * (steps.double() - t).clamp(min=0) / steps.double() if recipe.lr_schedule == "linear" else lr0
        opt.step(lr, wd, active)
        opt.zero_grad()
        losses[t] = torch.where(active, per_adapter.detach().float().cpu(), float("nan"))
    unet.eval()
    for p in params:
        p.requires_grad_(False)
    return mods, losses


# ---- sampling and the CLIP-score label ---------------------------------------------------------
@contextlib.contextmanager
def merged(unet, adapter) -> Iterator[None]:
    """The adapter's exact ΔW (lolscan's reader: U Vᵀ, scales folded in) added to the denoiser's weights for
    the block (a DoRA layer: its weight m ⊙ (W + ΔW) / ‖W + ΔW‖, `Layer.merged_weight`), then the weights
    restored: how the bench scripts sample a LoRA file with the base (names ``unet.…`` as lolscan reads
    diffusers LoRAs). None: the base as it is."""
    mods = dict(unet.named_modules())
    saved = {}
    try:
        with torch.no_grad():
            for name, layer in (adapter.items() if adapter is not None else []):
                mod = mods[name.removeprefix("unet.")]
                saved[name] = mod.weight.detach().clone()
                if layer.magnitude is not None:
                    mod.weight.copy_(layer.merged_weight(mod.weight))
                else:
                    mod.weight += layer.delta().to(mod.weight)
        yield
    finally:
        with torch.no_grad():
            for name, w in saved.items():
                mods[name.removeprefix("unet.")].weight.copy_(w)


@torch.no_grad()
def sample(base: DiffusionBase, k: int, prompts: list[str], seeds: list[int], steps: int,
           guidance_scale: float) -> torch.Tensor:
    """Images [K, n, 3, H, W] in [0, 1] for the n (prompt, seed) pairs under each of the K adapter slots
    in the denoiser (K = 1 and none injected: the base). Follows StableDiffusionPipeline.__call__:
    classifier-free guidance with an empty negative prompt, the pipeline's scheduler, eta = 0."""
    n, dev = len(prompts), base.device
    sched = copy.deepcopy(base.scheduler)
    sched.set_timesteps(steps, device=dev)
    step_kw = {"eta": 0.0} if "eta" in inspect.signature(sched.step).parameters else {}
    cond = base.encode_text(prompts)
    uncond = base.encode_text([""]).expand(n, -1, -1)
    cfg = guidance_scale > 1.0
    per_slot = torch.cat([uncond, cond]) if cfg else cond
    ehs = per_slot.repeat(k, 1, 1)
    lat = torch.cat([base.init_noise(s) for s in seeds]).to(dev)
    lat = (lat * sched.init_noise_sigma).repeat(k, 1, 1, 1)  # [K*n, C, h, w], adapter-major
    for t in sched.timesteps:
        x = lat.view(k, n, *lat.shape[1:])
        inp = torch.cat([x, x], 1).reshape(-1, *lat.shape[1:]) if cfg else lat
        inp = sched.scale_model_input(inp, t)
        eps = base.unet(inp.to(base.dtype), t, encoder_hidden_states=ehs).sample.float()
        if cfg:
            eps = eps.view(k, 2, n, *lat.shape[1:])
            eps = (eps[:, 0] + guidance_scale * (eps[:, 1] - eps[:, 0])).reshape(lat.shape)
        lat = sched.step(eps, t, lat, **step_kw).prev_sample
    img = base.from_model_space(lat.to(base.dtype))
    return img.view(k, n, *img.shape[1:]).cpu()


def clip_labels(base: DiffusionBase, clip: ClipScorer, k: int, recipe: DiffusionRecipe) -> list[dict[str, float]]:
    """Per slot: ``clip_score`` (mean over every prompt and seed), ``clip_score_p{j}`` (prompt j) and, with
    two seeds or more, ``clip_score_s{k}`` (seed k over every prompt: the label's sampling noise is measured
    from these halves, `bench/label_noise.py --halves`, without labelling anything twice)."""
    lab = recipe.labels
    pairs = [(j, p, s) for j, p in enumerate(lab.prompts) for s in lab.seeds]
    scores = torch.zeros(k, len(pairs))
    for i in range(0, len(pairs), lab.batch):
        chunk = pairs[i:i + lab.batch]
        imgs = sample(base, k, [p for _, p, _ in chunk], [s for _, _, s in chunk], lab.steps, lab.guidance_scale)
        texts = [p for _, p, _ in chunk] * k
        scores[:, i:i + len(chunk)] = clip.scores(imgs.flatten(0, 1), texts).view(k, len(chunk))
    # which of the pairs each per-prompt (and, with two seeds or more, per-seed) column averages
    columns = {f"clip_score_p{j}": [q for q, (jj, _, _) in enumerate(pairs) if jj == j] for j in range(len(lab.prompts))}
    if len(lab.seeds) > 1:
        columns |= {f"clip_score_s{si}": [q for q, (_, _, s) in enumerate(pairs) if s == seed]
                    for si, seed in enumerate(lab.seeds)}
    return [{"clip_score": round(float(scores[slot].mean()), 6),
             **{name: round(float(scores[slot, cols].mean()), 6) for name, cols in columns.items()}} for slot in range(k)]


# ---- writing -------------------------------------------------------------------------------------
def write_diffusers_lora(folder: Path, spec: DiffusionSpec, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                         target_modules: list[str], pipeline_class: Any = None,
                         dtype: torch.dtype = torch.float32, magnitudes: dict[str, torch.Tensor] | None = None) -> None:
    """One adapter as ``folder/pytorch_lora_weights.safetensors``, written by diffusers' own
    ``save_lora_weights`` (keys ``unet.<module>.lora_A/B.weight``, the LoRA config — rank and alpha —
    in the ``lora_adapter_metadata`` header entry), into a temporary folder renamed into place.
    ``magnitudes`` (DoRA): ``unet.<module>.lora_magnitude_vector`` [out] each, as peft's
    ``get_peft_model_state_dict`` names them, and use_dora true in the config."""
    from diffusers import StableDiffusionPipeline

    cls = pipeline_class if hasattr(pipeline_class, "save_lora_weights") else StableDiffusionPipeline
    layers = {}
    for n, (a, b) in factors.items():
        layers[f"{n}.lora_A.weight"] = a.to(dtype).contiguous()
        layers[f"{n}.lora_B.weight"] = b.to(dtype).contiguous()
        if magnitudes is not None:
            layers[f"{n}.lora_magnitude_vector"] = magnitudes[n].to(dtype).contiguous()
    meta = {"r": spec.rank, "lora_alpha": spec.alpha, "target_modules": list(target_modules),
            "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "use_dora": magnitudes is not None}
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cls.save_lora_weights(str(tmp), unet_lora_layers=layers, unet_lora_adapter_metadata=meta,
                          safe_serialization=True, weight_name=WEIGHT_NAME)
    # the header's __metadata__ keys sorted, as write_peft's: the same adapter is the same bytes whoever wrote it
    (tmp / WEIGHT_NAME).write_bytes(sorted_metadata((tmp / WEIGHT_NAME).read_bytes()))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


# ---- the build -----------------------------------------------------------------------------------
def yes_attributes(attrs: dict[str, Any]) -> list[str]:
    """The names of the yes/no (0/1) attributes that hold, in the source's order."""
    return [k for k, v in attrs.items() if isinstance(v, (bool, int)) and v in (0, 1) and v]


def spec_fields(s: DiffusionSpec, source, styles: bool = False) -> dict[str, Any]:
    """What the recipe and seed decide for one adapter before training, as the manifest writes it: with the
    source's ``attributes(style)`` where it has them (a font's bold, italic, …) as ``attr_<name>`` columns
    (every LoRA's images are of its one style), and its yes/no attributes once more as one multilabel
    ``attributes`` column (the names that hold: ``["bold", "serif"]``), the CelebA-attributes target.
    ``styles`` (a recipe that draws a style per LoRA): the style one-hot too (``sty_<name>``), a recipe fact
    the hyperparameter-only baseline reads, as it reads the classes (``cls_<name>``)."""
    row: dict[str, Any] = {"split": s.split, "classes": list(s.classes), "n_classes": len(s.classes)}
    row.update({f"cls_{c}": int(c in s.classes) for c in source.classes})
    row["style"] = s.style
    if styles:
        row.update({f"sty_{st}": int(st == s.style) for st in source.styles})
    if hasattr(source, "attributes"):
        attrs = source.attributes(s.style)
        row.update({f"attr_{k}": v for k, v in attrs.items()})
        row["attributes"] = yes_attributes(attrs)
    row.update({"dataset_size": s.dataset_size, "prompt_template": s.template, "rank": s.rank,
                "alpha": s.alpha, "lr": s.lr, "steps": s.steps, "batch_size": s.batch_size,
                "weight_decay": s.weight_decay})
    return row


def scorer_card(clip_model: str) -> dict[str, Any] | None:
    """The in-house scorer's clip.json when `clip_model` is a folder holding one, else None."""
    card = Path(clip_model).expanduser() / "clip.json"
    try:
        return json.loads(card.read_text(encoding="utf-8")) if card.is_file() else None
    except (OSError, ValueError):
        return None


def scorer_label(labels) -> str:
    """What clip_score is called: the recipe's ``[labels] scorer``, else the in-house card's label, else
    "CLIP score (<clip_model>)"."""
    if labels.scorer:
        return labels.scorer
    card = scorer_card(labels.clip_model)
    return str(card.get("label")) if card and card.get("label") else f"CLIP score ({labels.clip_model})"


def build_diffusion(recipe: DiffusionRecipe, out: str | Path, *, base: DiffusionBase | None = None,
                    clip: ClipScorer | None = None, device: str = "cpu", dtype: str | None = None,
                    base_path: str | None = None, data_root: str | None = None, max_minutes: float | None = None, max_groups: int | None = None,
                    save_dtype: str = "float32", labels_from: KnownLabels | None = None,
                    log: Callable[[str], None] = print) -> BuildReport:
    """Build (or resume) the diffusion zoo described by `recipe` into `out` (see the module docstring).

    ``labels_from``: an earlier build's manifest of this recipe and seed; its labels are taken after the
    checks of `known_labels` (every adapter's draws equal, every group's training losses within tolerance,
    every ``check_every``-th group labelled here and compared). ``data_root``: the image source's folder
    (its ``data_root`` option), overriding the recipe's."""
    t_start = time.monotonic()
    options = dict(recipe.data.source_options)
    if data_root is not None:  # --data-root: where a source that reads files finds them (not part of the recipe)
        options["data_root"] = data_root
    source = open_source(recipe.data.source, options)  # missing data: exit 3 before the base model loads
    if hasattr(source, "pair"):  # a mix: a LoRA's classes and its one style would come from different sources
        raise UsageError(f"recipe: image source {recipe.data.source!r} pairs classes with styles (a mix of sources); "
                         "a zoo draws a LoRA's classes and style independently, so build each zoo on one of its "
                         "sources (the mix is for training the in-house base and scorer)")
    if base is None:
        base = load_base(recipe.base, device=device, dtype=dtype, path_override=base_path)
    targets = find_targets(base.unet, recipe.target_modules)
    if not targets:
        raise UsageError(f"recipe: no nn.Linear named {recipe.target_modules} in the base model's denoiser")
    if clip is None:
        clip = ClipScorer.load(recipe.labels.clip_model, device=str(base.device))
    specs = sample_specs(recipe, source)
    if labels_from is not None:
        fields = {s.id: spec_fields(s, source, recipe.data.styles) for s in specs}
        keys_ = tuple(next(iter(fields.values())))  # a partial manifest (a build stopped early) covers some groups
        labels_from.check_specs({a: f for a, f in fields.items() if a in labels_from.rows}, keys=keys_)
    keys = ["clip_score", *(f"clip_score_p{j}" for j in range(len(recipe.labels.prompts))),
            *(f"clip_score_s{k}" for k in range(len(recipe.labels.seeds)) if len(recipe.labels.seeds) > 1)]
    if labels_from is not None and labels_from.rows:  # a manifest from before the per-seed columns
        first = next(iter(labels_from.rows.values()))
        keys = [k for k in keys if k in first or not k.startswith("clip_score_s")]
    out = Path(out)
    info = {"recipe": recipe.to_dict(), "recipe_digest": recipe.digest(), "kind": "diffusion",
            "data": {"source": source.name, "version": source.version, "options": recipe.data.source_options},
            "base": base.name, "resolution": base.resolution, "targets": targets,
            "label_names": {k: scorer_label(recipe.labels) + ("" if k == "clip_score" else
                                                               f", {'prompt' if k[11] == 'p' else 'seed'} {k[12:]}")
                            for k in keys}, "scorer": scorer_card(recipe.labels.clip_model)}
    if labels_from is not None:
        info["labels_from"] = labels_from.provenance()
    info_path = out / "zoo.json"
    if info_path.exists():
        old = json.loads(info_path.read_text())
        check_resume(out, old, info, ("recipe_digest", "data", "targets", "resolution"), labels_from)
        info = old
    else:
        out.mkdir(parents=True, exist_ok=True)
        info["base_labels"] = clip_labels(base, clip, 1, recipe)[0]  # what the zoo's labels are read against
        log(f"base model labels: {info['base_labels']}")
        atomic_write(info_path, json.dumps(info, indent=1))
    (out / "adapters").mkdir(exist_ok=True)
    groups = group_specs(specs, recipe.group_size)
    order = {s.id: (pos, slot) for pos, g in enumerate(groups) for slot, s in enumerate(g)}
    manifest = out / MANIFEST
    rows: dict[str, dict[str, Any]] = {}
    for r in read_zoo_rows(manifest):  # earlier builds appended a partly present group's rows again: the first stands
        rows.setdefault(r["id"], r)
    with open(manifest, "w", encoding="utf-8") as f:  # without a torn tail or a repeated id
        f.writelines(json.dumps(r) + "\n" for r in rows.values())
    commit_rows(manifest, [], order)  # in group order, as one uninterrupted build writes it
    done = set(rows)
    rep = BuildReport(out=out, done=len(done), total=len(specs), groups_run=0, base_labels=info.get("base_labels", {}))
    t_loop = time.monotonic()
    for gi, group in enumerate(groups):
        if all(s.id in done for s in group):
            continue
        if time_to_stop(rep, max_groups, max_minutes, t_start, t_loop):
            break
        t0 = time.monotonic()
        try:  # a failed group (a label --labels-from does not reproduce) leaves the plain base behind
            mods, losses = train_group(base, targets, group, recipe, source)
            finite = all_finite(mods)  # [K]: False = diverged
            t1 = time.monotonic()
            # a group the manifest lacks (the build that wrote it stopped before it) is labelled as usual
            known = labels_from if labels_from is not None and labels_from.holds([s.id for s in group]) else None
            measured = None
            if known is None or known.checks(gi):
                measured = clip_labels(base, clip, len(group), recipe)
            t2 = time.monotonic()
            rows_out = []
            for slot, s in enumerate(group):  # every row first: a mismatch with labels_from leaves no trace
                tl = losses[: s.steps, slot]
                labels = measured[slot] if measured is not None else None
                if known is not None:
                    labels = known.labels(s.id, keys, labels)
                row = {"id": s.id, "path": f"adapters/{s.id}/{WEIGHT_NAME}", "finite": bool(finite[slot]), **labels,
                       **spec_fields(s, source, recipe.data.styles),
                       "train_loss_first": round(float(tl[0]), 6), "train_loss_last": round(float(tl[-5:].mean()), 6)}
                if known is not None:
                    known.check_training(s.id, row)
                rows_out.append(row)
            if known is not None and measured is not None:
                rep.groups_checked += 1
            new_rows = []
            for slot, (s, row) in enumerate(zip(group, rows_out)):
                # a row already in the manifest (a group partly carried from another lease, a manifest cut short)
                # stands, and its adapter with it: training the group again need not give its labels again (another
                # GPU, nondeterministic kernels, labels_from), and a carried row's adapter may be home, not here
                if s.id in done:
                    continue
                write_diffusers_lora(out / "adapters" / s.id, s, extract(mods, slot, {n: s.rank for n in targets}),
                                     recipe.target_modules, base.pipeline_class, getattr(torch, save_dtype),
                                     magnitudes=extract_magnitude(mods, slot))
                new_rows.append(row)
            commit_rows(manifest, new_rows, order)  # the missing rows only, each at its place in group order
        finally:
            eject(base.unet, targets)
        t3 = time.monotonic()
        rep.seconds_train += t1 - t0
        rep.seconds_label += t2 - t1
        rep.seconds_write += t3 - t2
        rep.groups_run += 1
        rep.done += sum(1 for s in group if s.id not in done)
        done.update(s.id for s in group)
        if not all(finite):
            log(f"warning: {finite.count(False)} of {len(group)} adapters diverged "
                "(NaN/Inf factors; row 'finite': false)")
        log(f"group {rep.groups_run}: {len(group)} adapters (steps ≤ {max(s.steps for s in group)}, batch ≤ "
            f"{max(s.batch_size for s in group)}) train {t1 - t0:.1f}s label {t2 - t1:.1f}s write {t3 - t2:.1f}s"
            f"{'' if measured is not None else ' (labels from manifest)'} — {rep.done}/{rep.total} done")
    if labels_from is not None:
        rep.label_max_diff = labels_from.max_diff
    return rep
