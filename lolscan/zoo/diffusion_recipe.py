"""Diffusion zoo recipes: DreamBooth-style LoRAs on a text-to-image base, and how each one's settings are drawn.

A recipe whose ``[base]`` has ``kind = "diffusers"`` (a Stable Diffusion pipeline folder or hub id) is a
diffusion recipe; the language zoos' conventions hold (``extends``, seeded draws per adapter, splits,
groups). Per LoRA the builder draws learning rate, steps, batch, rank, weight decay, the classes it is
finetuned on, a style, the dataset size and a prompt template; every draw comes from a generator seeded
by (seed, adapter index, stream), so an adapter never depends on its group.

Base kinds: ``diffusers`` (latent SD: VAE + text encoder + UNet, `diffusion_base.load_diffusers`); the
in-house pixel-space base (a UNet on 32×32 images conditioned on a small text encoder's token states) is
to be registered as another kind in `diffusion_base.BASE_KINDS`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from .recipe import _alpha, _rng, draw, read_toml

BASE_KINDS = ("diffusers", "pixel")  # `diffusion_base.BASE_KINDS` holds the loaders


@dataclass
class ImageData:
    source: str = "shapes"
    source_options: dict[str, Any] = field(default_factory=dict)
    class_p: float = 0.5  # each class is in a LoRA's set with this probability (at least one is)
    styles: bool = True  # one style per LoRA drawn from the source's styles (else the first style)
    dataset_size: Any = 8  # images per LoRA (a number or a distribution)
    templates: list[str] = field(default_factory=lambda: ["a {style} {cls}"])  # {cls} {style}


@dataclass
class ClipLabels:
    """The CLIP-score label: images generated with the LoRA from fixed prompts and seeds, scored by CLIP."""

    clip_model: str = "openai/clip-vit-base-patch32"  # folder or hub id (CLIPModel + CLIPProcessor)
    # what the clip_score labels are, as zoo.json ("label_names") and cards say it; empty: the in-house
    # scorer's card label ("CLIP score (in-house CLIP-style scorer)") for a folder made by
    # scripts/inhouse_clip.py, else "CLIP score (<clip_model>)"
    scorer: str = ""
    prompts: list[str] = field(default_factory=lambda: ["a red circle"])
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int = 25  # inference steps (the pipeline's scheduler)
    guidance_scale: float = 7.5
    batch: int = 8  # (prompt, seed) pairs per sampling forward, times the group's adapters


@dataclass
class DiffusionRecipe:
    name: str
    seed: int
    n_loras: int
    base: dict[str, Any]  # {kind, path, name?, dtype?, resolution?}
    target_modules: list[str]
    rank: Any  # int or {"choice": [...]}
    alpha: Any  # float or "2r"
    hparams: dict[str, Any]  # lr, steps, batch_size, weight_decay
    data: ImageData
    labels: ClipLabels
    group_size: int = 8
    lr_schedule: str = "constant"
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    # [lora] use_dora: DoRA adapters (peft's use_dora: a trained magnitude per output row beside A and B),
    # written with ``lora_magnitude_vector`` keys and use_dora in the file's LoRA config
    use_dora: bool = False

    kind = "diffusion"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiffusionRecipe":
        d = json.loads(json.dumps(d))
        try:
            lora = d.pop("lora", {})
            r = cls(data=ImageData(**d.pop("data", {})), labels=ClipLabels(**d.pop("labels", {})),
                    target_modules=list(lora.get("target_modules", ["to_q", "to_k", "to_v", "to_out.0"])),
                    rank=lora.get("rank", 4), alpha=lora.get("alpha", "1r"),
                    use_dora=lora.get("use_dora", False), **d)
        except TypeError as exc:
            raise UsageError(f"recipe: {exc}") from None
        r.validate()
        return r

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["labels"]["scorer"]:
            del d["labels"]["scorer"]  # unset: recipes (and digests) from before the option read as they did
        d["lora"] = {"target_modules": d.pop("target_modules"), "rank": d.pop("rank"), "alpha": d.pop("alpha")}
        if d.pop("use_dora"):  # absent when off, so recipes from before the option keep their digest
            d["lora"]["use_dora"] = True
        return d

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def validate(self) -> None:
        if self.n_loras < 1 or self.group_size < 1:
            raise UsageError("recipe: n_loras and group_size must be >= 1")
        if self.base.get("kind") not in BASE_KINDS:
            raise UsageError(f"recipe: [base] kind must be one of {BASE_KINDS}")
        if not self.base.get("path"):
            raise UsageError("recipe: [base] path (a diffusers pipeline folder or hub id, or a pixel base folder) is missing")
        for key in ("lr", "steps", "batch_size", "weight_decay"):
            if key not in self.hparams:
                raise UsageError(f"recipe: hparams.{key} is missing")
        if isinstance(self.rank, dict) and (set(self.rank) != {"choice"}):
            raise UsageError("recipe: a diffusion recipe's rank is a number or {choice = [...]} (no per_layer)")
        if self.lr_schedule not in ("constant", "linear"):
            raise UsageError("recipe: lr_schedule must be 'constant' or 'linear'")
        if not isinstance(self.use_dora, bool):
            raise UsageError("recipe: lora.use_dora must be true or false")
        if abs(sum(self.splits.values()) - 1.0) > 1e-6:
            raise UsageError("recipe: splits must sum to 1")
        if not self.data.templates or not self.labels.prompts or not self.labels.seeds:
            raise UsageError("recipe: data.templates, labels.prompts and labels.seeds must not be empty")
        for t in self.data.templates:
            try:
                t.format(cls="x", style="y")
            except (KeyError, IndexError, ValueError):
                raise UsageError(f"recipe: template {t!r} may use only {{cls}} and {{style}}") from None


def is_diffusion(d: dict[str, Any]) -> bool:
    return isinstance(d.get("base"), dict) and "kind" in d["base"]


def load_recipe(path: str | Path):
    """A zoo recipe file: a `DiffusionRecipe` when its [base] names a kind, else a language `Recipe`."""
    from .recipe import Recipe

    d = read_toml(Path(path))
    return DiffusionRecipe.from_dict(d) if is_diffusion(d) else Recipe.from_dict(d)


@dataclass
class DiffusionSpec:
    """Everything that defines one diffusion zoo member before training."""

    index: int
    rank: int
    alpha: float
    lr: float
    steps: int
    batch_size: int
    weight_decay: float
    classes: list[str]
    style: str
    dataset_size: int
    template: int  # index into the recipe's templates
    split: str
    layer_ranks = None  # one rank for every module (the LLM specs' per-layer ranks are not offered here)
    dropout = 0.0

    @property
    def id(self) -> str:
        return f"lora-{self.index:05d}"

    def dataset(self, recipe: DiffusionRecipe, source, size: int) -> tuple[list[np.ndarray], list[str], list[str]]:
        """This LoRA's finetuning images, their classes and captions (classes taken in turn, so each appears)."""
        rng = _rng(recipe.seed, self.index, 5)
        tpl = recipe.data.templates[self.template]
        imgs, classes, caps = [], [], []
        for j in range(self.dataset_size):
            c = self.classes[j % len(self.classes)]
            imgs.append(source.image(c, self.style, size, rng))
            classes.append(c)
            caps.append(tpl.format(cls=c, style=self.style))
        return imgs, classes, caps


def sample_specs(recipe: DiffusionRecipe, source) -> list[DiffusionSpec]:
    split_names = list(recipe.splits)
    split_p = np.array([recipe.splits[k] for k in split_names], dtype=float)
    out = []
    for i in range(recipe.n_loras):
        rng = _rng(recipe.seed, i, 0)
        h = {k: draw(recipe.hparams[k], rng) for k in ("lr", "steps", "batch_size", "weight_decay")}
        rank = int(draw(recipe.rank, rng))
        member = rng.random(len(source.classes)) < recipe.data.class_p
        if not member.any():
            member[int(rng.integers(len(source.classes)))] = True
        style = source.styles[int(rng.integers(len(source.styles)))] if recipe.data.styles else source.styles[0]
        n_img = int(draw(recipe.data.dataset_size, rng))
        tpl = int(rng.integers(len(recipe.data.templates)))
        split = split_names[int(rng.choice(len(split_names), p=split_p / split_p.sum()))]
        out.append(DiffusionSpec(index=i, rank=rank, alpha=_alpha(recipe.alpha, rank), lr=float(h["lr"]),
                                 steps=int(h["steps"]), batch_size=int(h["batch_size"]),
                                 weight_decay=float(h["weight_decay"]),
                                 classes=[c for c, m in zip(source.classes, member) if m], style=style,
                                 dataset_size=max(1, n_img), template=tpl, split=split))
    return out
