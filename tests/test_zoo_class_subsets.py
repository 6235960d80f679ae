"""A diffusion recipe's [data] images_per_class and class_subsets: the class-subset zoo as the paper's
Imagenette-LoRA (arXiv 2410.04207; every non-empty subset of the 10 classes twice, a fixed number of images
per class, so the dataset size is that number times the class count). Recipes without them keep their
digests and their draws."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lolscan.errors import UsageError
from lolscan.zoo.diffusion_recipe import (
    DiffusionRecipe,
    class_subset_order,
    load_recipe,
    sample_specs,
)

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
TEN = SimpleNamespace(classes=[f"c{i}" for i in range(10)], styles=["s0", "s1", "s2", "s3"])

# computed on main (b3216f1) before the options existed: (recipe digest, digest of every LoRA's draws on TEN)
BEFORE = {
    "inhouse-fashion-classes": ("5fd1e7074f99cd54", "82ebeb982a424590"),
    "inhouse-fashion-classes-inhouse-clip": ("251d2f6e6539c531", "82ebeb982a424590"),
    "inhouse-fashion-classes-inhouse-clip-retest": ("072d199472b0ae8c", "82ebeb982a424590"),
    "inhouse-fashion-classes-dora": ("e1a57035ed634036", "171cdd90bfb67aec"),
    "inhouse-fonts-identity": ("604af6b232b16f4e", "07c2f008923d88c2"),
    "inhouse-mix-fashion-classes": ("05a1b3715f2f9444", "82ebeb982a424590"),
    "inhouse-mix-fonts-identity": ("959f4ece896115ca", "07c2f008923d88c2"),
    "sd15-shapes-attn": ("886f1ba87cffac97", "f6ada1e2db7c955d"),
}


def draws_digest(specs) -> str:
    return hashlib.sha256(json.dumps([vars(s) for s in specs], sort_keys=True).encode()).hexdigest()[:16]


def toy(**data) -> dict:
    """A diffusion recipe dict (nothing is loaded to draw its specs)."""
    d = {"name": "toy", "seed": 3, "n_loras": 40, "group_size": 4, "base": {"kind": "pixel", "path": "/p"},
         "lora": {"rank": {"choice": [2, 4]}},
         "hparams": {"lr": {"loguniform": [1e-4, 1e-2]}, "steps": {"int_uniform": [10, 90]},
                     "batch_size": {"choice": [2, 4]}, "weight_decay": {"choice": [0.0, 0.01]}},
         "data": {"source": "fashion_mnist", "styles": True, "templates": ["a {cls}", "a {style} {cls}"]},
         "labels": {"prompts": ["x"], "seeds": [0]}}
    d["data"].update(data)
    return d


def test_recipes_without_the_options_keep_their_digests_and_draws():
    for name, (digest, draws) in BEFORE.items():
        r = load_recipe(RECIPES / f"{name}.toml")
        assert r.digest() == digest, name
        assert draws_digest(sample_specs(r, TEN)) == draws, name
        d = r.to_dict()["data"]
        assert not {"images_per_class", "class_subsets", "subset_repeat"} & set(d), name
    from diffusion_toy import toy_diffusion_recipe

    assert DiffusionRecipe.from_dict(toy_diffusion_recipe(Path("/p"), Path("/c"))).digest() == "6c272a3ec5d4ee55"


def test_every_nonempty_subset_of_ten_classes_exactly_twice():
    r = DiffusionRecipe.from_dict(toy(class_subsets="all", subset_repeat=2, dataset_size=8))
    r.n_loras = 2046
    specs = sample_specs(r, TEN)
    counts = Counter(frozenset(s.classes) for s in specs)
    assert len(counts) == 1023 and set(counts.values()) == {2} and frozenset() not in counts
    assert all(s.classes == [c for c in TEN.classes if c in s.classes] for s in specs)  # in the source's order
    # one seeded random order, not an enumeration: the first 200 are a fair sample (mean 5 classes, every class
    # in about half), and another seed gives another order
    first = specs[:200]
    assert abs(np.mean([len(s.classes) for s in first]) - 5.0) < 0.4
    assert all(0.35 < np.mean([c in s.classes for s in first]) < 0.65 for c in TEN.classes)
    assert [len(s.classes) for s in specs[:20]] != sorted(len(s.classes) for s in specs[:20])
    other = DiffusionRecipe.from_dict({**toy(class_subsets="all", subset_repeat=2, dataset_size=8), "seed": 4})
    assert [s.classes for s in sample_specs(other, TEN)[:50]] != [s.classes for s in specs[:50]]
    # never from n_loras: a smaller zoo (or a build stopped early) has the first LoRAs of the whole
    r.n_loras = 7
    assert [vars(s) for s in sample_specs(r, TEN)] == [vars(s) for s in specs[:7]]
    # at most every subset k times
    r.n_loras = 2047
    with pytest.raises(UsageError, match=r"2046 class sets .*n_loras = 2047"):
        sample_specs(r, TEN)
    once = DiffusionRecipe.from_dict(toy(class_subsets="all", dataset_size=8))  # subset_repeat defaults to 1
    once.n_loras = 1023
    assert set(Counter(frozenset(s.classes) for s in sample_specs(once, TEN)).values()) == {1}
    once.n_loras = 1024
    with pytest.raises(UsageError, match="1023 class sets"):
        sample_specs(once, TEN)


def test_the_subset_order_is_its_own_stream_and_the_other_draws_stay():
    """The class sets come from their own generator; every other draw of LoRA i is the one a class_p recipe
    gives it (the class_p draw's uniforms are still drawn: with class_p = 1 there is no extra draw)."""
    d = {"dataset_size": {"int_uniform": [4, 64]}}
    subsets, plain = (DiffusionRecipe.from_dict(toy(class_subsets="all", **d)),
                      DiffusionRecipe.from_dict(toy(class_p=1.0, **d)))
    a, b = sample_specs(subsets, TEN), sample_specs(plain, TEN)
    for x, y in zip(a, b):
        assert {**vars(x), "classes": None} == {**vars(y), "classes": None}
    assert len({tuple(s.classes) for s in a}) > 30 and all(len(s.classes) == 10 for s in b)
    order = class_subset_order(subsets.seed, 10)
    assert [s.classes for s in a] == [[c for c, m in zip(TEN.classes, row) if m] for row in order[:40]]


def test_images_per_class_makes_the_dataset_size_and_gives_each_class_m_images():
    r = DiffusionRecipe.from_dict(toy(images_per_class=3, class_p=0.4))
    const = DiffusionRecipe.from_dict(toy(dataset_size=8, class_p=0.4))
    specs = sample_specs(r, TEN)
    assert [s.dataset_size for s in specs] == [3 * len(s.classes) for s in specs]
    assert len({s.dataset_size for s in specs}) > 3
    # no draw for it (as a constant dataset_size): the draws after it stay
    for x, y in zip(specs, sample_specs(const, TEN)):
        assert {**vars(x), "dataset_size": None} == {**vars(y), "dataset_size": None}
    source = SimpleNamespace(**vars(TEN), image=lambda c, st, size, rng: np.full((size, size, 3), rng.random()))
    for s in specs[:10]:
        imgs, classes, caps = s.dataset(r, source, 4)
        assert len(imgs) == len(caps) == s.dataset_size
        assert Counter(classes) == {c: 3 for c in s.classes}


def test_exclusive_options_and_bad_values_are_usage_errors():
    with pytest.raises(UsageError, match=r"\[data\] images_per_class and dataset_size are exclusive"):
        DiffusionRecipe.from_dict(toy(images_per_class=3, dataset_size=8))
    with pytest.raises(UsageError, match=r"\[data\] class_subsets and class_p are exclusive"):
        DiffusionRecipe.from_dict(toy(class_subsets="all", class_p=0.3))
    with pytest.raises(UsageError, match='subset_repeat needs class_subsets = "all"'):
        DiffusionRecipe.from_dict(toy(subset_repeat=2))
    for bad in ({"images_per_class": 0}, {"images_per_class": 2.5}, {"images_per_class": True},
                {"class_subsets": "some"}, {"class_subsets": "all", "subset_repeat": 0}):
        with pytest.raises(UsageError, match=next(iter(bad)) if "subset_repeat" not in bad else "subset_repeat"):
            DiffusionRecipe.from_dict(toy(**bad))
    many = SimpleNamespace(classes=[f"g{i}" for i in range(26)], styles=["s"])
    with pytest.raises(UsageError, match="needs 1 <= C <= 20, the source has 26"):
        sample_specs(DiffusionRecipe.from_dict(toy(class_subsets="all")), many)


def test_a_variant_moves_from_dataset_size_and_class_p_to_the_new_options(tmp_path):
    """extends: a child's images_per_class replaces its parent's dataset_size, its class_subsets the parent's
    class_p (and back); within one file both are an error, naming the fields."""
    (tmp_path / "parent.toml").write_text((RECIPES / "inhouse-fashion-classes.toml").read_text())
    (tmp_path / "child.toml").write_text('extends = "parent.toml"\n[data]\nimages_per_class = 5\n'
                                         'class_subsets = "all"\n')
    child = load_recipe(tmp_path / "child.toml")
    assert child.data.images_per_class == 5 and child.data.class_subsets == "all" and child.data.subset_repeat == 1
    d = child.to_dict()["data"]
    assert "dataset_size" not in d and "class_p" not in d and d["subset_repeat"] == 1
    assert DiffusionRecipe.from_dict(child.to_dict()).digest() == child.digest()  # zoo.json reads back
    assert child.data.templates == load_recipe(tmp_path / "parent.toml").data.templates  # the rest inherited
    (tmp_path / "back.toml").write_text('extends = "child.toml"\n[data]\ndataset_size = 9\nclass_p = 0.2\n')
    back = load_recipe(tmp_path / "back.toml")
    assert back.data.dataset_size == 9 and back.data.class_p == 0.2
    assert back.data.images_per_class is None and back.data.class_subsets is None
    (tmp_path / "both.toml").write_text('extends = "parent.toml"\n[data]\nimages_per_class = 5\ndataset_size = 9\n')
    with pytest.raises(UsageError, match="images_per_class and dataset_size are exclusive"):
        load_recipe(tmp_path / "both.toml")
    (tmp_path / "both2.toml").write_text('extends = "parent.toml"\n[data]\nclass_subsets = "all"\nclass_p = 0.5\n')
    with pytest.raises(UsageError, match="class_subsets and class_p are exclusive"):
        load_recipe(tmp_path / "both2.toml")
