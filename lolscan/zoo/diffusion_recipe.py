"""Diffusion zoo recipes: DreamBooth-style LoRAs on a text-to-image base, and how each one's settings are drawn.

A recipe whose ``[base]`` has ``kind = "diffusers"`` (a Stable Diffusion pipeline folder or hub id) is a
diffusion recipe; the language zoos' conventions hold (``extends``, seeded draws per adapter, splits,
groups). Per LoRA the builder draws learning rate, steps, batch, rank, weight decay, the classes it is
finetuned on, a style, the dataset size and a prompt template; every draw comes from a generator seeded
by (seed, adapter index, stream), so an adapter never depends on its group.

Two ``[data]`` options make a class-subset zoo as the paper's Imagenette-LoRA (arXiv 2410.04207): every
non-empty subset of the 10 classes twice, a fixed number of images per class, so that the dataset size is
that number times the class count:

- ``images_per_class = m``: each LoRA's dataset size is m × its number of classes, and each class has
  exactly m of its images (`DiffusionSpec.dataset` takes the classes in turn). Instead of ``dataset_size``.
- ``class_subsets = "all"`` (with ``subset_repeat = k``, default 1): the LoRAs' class sets run through
  every non-empty subset of the source's C classes, each k times, in one seeded random order
  (`class_subset_order`; from the recipe seed alone, never from n_loras, so a zoo stopped early, or built
  with fewer LoRAs, is a uniform sample of it); n_loras ≤ (2^C − 1)·k. Instead of ``class_p``.

A variant (``extends``) that sets one of these drops what its parent set of the other (`recipe.REPLACES`);
one file that sets both is an error.

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
    # m: dataset size = m × the LoRA's number of classes, m images of each (instead of dataset_size)
    images_per_class: int | None = None
    # "all": the class sets run through every non-empty subset of the classes, subset_repeat times each, in
    # a seeded random order (instead of class_p)
    class_subsets: str | None = None
    subset_repeat: int = 1


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
        data = d.get("data", {})
        if isinstance(data, dict):
            for new, old, why in (
                    ("images_per_class", "dataset_size",
                     "images_per_class = m makes each LoRA's dataset size m x its number of classes"),
                    ("class_subsets", "class_p",
                     ('class_subsets = "all" gives each LoRA\'s classes from the enumeration of every non-empty '
                      "subset, so class_p would be ignored"))):
                if new in data and old in data:
                    raise UsageError(f"recipe: [data] {new} and {old} are exclusive ({why}); give one of them "
                                     f"(a variant's {new} replaces the {old} of the recipe it extends)")
            if "subset_repeat" in data and "class_subsets" not in data:
                raise UsageError('recipe: [data] subset_repeat needs class_subsets = "all"')
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
        data = d["data"]
        # absent when unset, so recipes from before the options keep their digest; when set, the option
        # they stand in for (unused) is left out, and from_dict reads the dict back
        if data["images_per_class"] is None:
            del data["images_per_class"]
        else:
            del data["dataset_size"]
        if data["class_subsets"] is None:
            del data["class_subsets"], data["subset_repeat"]
        else:
            del data["class_p"]
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
        m = self.data.images_per_class
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise UsageError(f"recipe: [data] images_per_class must be a whole number >= 1, got {m!r}")
        if self.data.class_subsets not in (None, "all"):
            raise UsageError(f'recipe: [data] class_subsets must be "all", got {self.data.class_subsets!r}')
        k = self.data.subset_repeat
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UsageError(f"recipe: [data] subset_repeat must be a whole number >= 1, got {k!r}")
        if self.data.class_subsets is None and k != 1:
            raise UsageError('recipe: [data] subset_repeat needs class_subsets = "all"')
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


# the generator of `class_subset_order`: the recipe seed and this tag (not an adapter's (seed, index, stream))
SUBSETS_TAG = 0x5355_4253
MAX_SUBSET_CLASSES = 20  # class_subsets = "all" over more classes would enumerate over a million subsets


def class_subset_order(seed: int, n_classes: int, repeat: int = 1) -> np.ndarray:
    """``class_subsets = "all"``: every non-empty subset of ``n_classes`` classes, ``repeat`` times each, in
    one random order from ``seed`` — a ``((2^C − 1)·repeat, C)`` 0/1 array, row i LoRA i's classes (column j:
    the source's class j). It never depends on how many LoRAs a zoo has: a zoo of n takes the first n rows,
    a uniform sample of the whole."""
    if not 1 <= n_classes <= MAX_SUBSET_CLASSES:
        raise UsageError(f'recipe: [data] class_subsets = "all" enumerates the 2^C - 1 subsets of the source\'s '
                         f"C classes: needs 1 <= C <= {MAX_SUBSET_CLASSES}, the source has {n_classes}")
    masks = np.tile(np.arange(1, 2 ** n_classes, dtype=np.int64), repeat)
    masks = np.random.default_rng(np.random.SeedSequence([seed, SUBSETS_TAG])).permutation(masks)
    return ((masks[:, None] >> np.arange(n_classes)) & 1).astype(bool)


def sample_specs(recipe: DiffusionRecipe, source) -> list[DiffusionSpec]:
    split_names = list(recipe.splits)
    split_p = np.array([recipe.splits[k] for k in split_names], dtype=float)
    n_cls = len(source.classes)
    subsets = None
    if recipe.data.class_subsets == "all":
        subsets = class_subset_order(recipe.seed, n_cls, recipe.data.subset_repeat)
        if recipe.n_loras > len(subsets):
            raise UsageError(f'recipe: [data] class_subsets = "all" with subset_repeat = {recipe.data.subset_repeat} '
                             f"gives {len(subsets)} class sets ((2^{n_cls} - 1) x {recipe.data.subset_repeat}), fewer "
                             f"than n_loras = {recipe.n_loras}")
    out = []
    for i in range(recipe.n_loras):
        rng = _rng(recipe.seed, i, 0)
        h = {k: draw(recipe.hparams[k], rng) for k in ("lr", "steps", "batch_size", "weight_decay")}
        rank = int(draw(recipe.rank, rng))
        if subsets is None:
            member = rng.random(n_cls) < recipe.data.class_p
            if not member.any():
                member[int(rng.integers(n_cls))] = True
        else:  # the class_p draw's uniforms are still drawn, so the draws after it keep their place
            rng.random(n_cls)
            member = subsets[i]
        style = source.styles[int(rng.integers(len(source.styles)))] if recipe.data.styles else source.styles[0]
        if recipe.data.images_per_class is None:
            n_img = int(draw(recipe.data.dataset_size, rng))
        else:  # no draw (as a constant dataset_size)
            n_img = recipe.data.images_per_class * int(member.sum())
        tpl = int(rng.integers(len(recipe.data.templates)))
        split = split_names[int(rng.choice(len(split_names), p=split_p / split_p.sum()))]
        out.append(DiffusionSpec(index=i, rank=rank, alpha=_alpha(recipe.alpha, rank), lr=float(h["lr"]),
                                 steps=int(h["steps"]), batch_size=int(h["batch_size"]),
                                 weight_decay=float(h["weight_decay"]),
                                 classes=[c for c, m in zip(source.classes, member) if m], style=style,
                                 dataset_size=max(1, n_img), template=tpl, split=split))
    return out
