"""A diffusion recipe's [data] images_per_class and class_subsets: the class-subset zoo as the paper's
Imagenette-LoRA (arXiv 2410.04207; every non-empty subset of the 10 classes twice, a fixed number of images
per class, so the dataset size is that number times the class count). Recipes without them keep their
digests and their draws; recipes/inhouse-mix-fashion-classes.toml uses both."""
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


def test_the_mix_fashion_recipe_is_imagenette_lora_shaped():
    from lolscan.zoo.images import get_source

    r = load_recipe(RECIPES / "inhouse-mix-fashion-classes.toml")
    assert (r.n_loras, r.data.class_subsets, r.data.subset_repeat, r.data.images_per_class) == (2046, "all", 2, 7)
    assert r.hparams["steps"] == {"int_uniform": [50, 300]}  # steps drawn on their own: the parent's cost
    specs = sample_specs(r, get_source(r.data.source, r.data.source_options))
    counts = Counter(frozenset(s.classes) for s in specs)
    assert len(counts) == 1023 and set(counts.values()) == {2}
    sizes = np.array([s.dataset_size for s in specs])
    assert (sizes == 7 * np.array([len(s.classes) for s in specs])).all()
    assert abs(sizes.mean() - 35.0) < 0.1  # the parent's uniform 4-64 has mean 34
    assert {s.style for s in specs} == {"grey"} and r.base["path"] == "inhouse-base-mix"


def test_baseline_of_class_facts_reads_none_of_them():
    """With images_per_class, dataset_size = m x n_classes: the recipe-only baseline of either (or of the
    classes) must not read the other or the cls_* columns; on the mix recipe's rows it is then the floor."""
    from lolscan.evaluation.compare import (
        fit_hp_baseline,
        metric,
        recipe_columns,
        recipe_matrix,
    )
    from lolscan.zoo.diffusion import spec_fields
    from lolscan.zoo.images import get_source

    r = load_recipe(RECIPES / "inhouse-mix-fashion-classes.toml")
    source = get_source(r.data.source, r.data.source_options)
    rows = [spec_fields(s, source, r.data.styles) for s in sample_specs(r, source)]
    cols = list(rows[0])
    train, test = [x for x in rows if x["split"] != "test"], [x for x in rows if x["split"] == "test"]
    for target in ("dataset_size", "n_classes"):
        feats = recipe_columns(cols, target)
        assert feats == ["lr", "steps", "batch_size", "weight_decay", "rank", "alpha"], target
        y = np.array([x[target] for x in train], dtype=float)
        yt = np.array([x[target] for x in test], dtype=float)
        pred = fit_hp_baseline("regression", recipe_matrix(train, feats), y, recipe_matrix(test, feats), feats,
                               models=["ridge"])["ridge"]
        assert metric("regression", yt, pred) < 0.05, target  # nothing to read
        leaky = [c for c in cols if c.startswith("cls_")] + [c for c in ("dataset_size", "n_classes") if c != target]
        pred = fit_hp_baseline("regression", recipe_matrix(train, leaky), y, recipe_matrix(test, leaky), leaky,
                               models=["ridge"])["ridge"]
        assert metric("regression", yt, pred) > 0.999, target  # what those columns would have given away
    assert "dataset_size" not in recipe_columns(cols, "classes", "multilabel", source.classes)


def test_cli_builds_the_mix_fashion_recipe_small(tmp_path, monkeypatch):
    """`lolscan zoo build` of the shipped mix recipe at 16 px on a tiny random base and CLIP, 3 LoRAs: the
    manifest's dataset_size is 7 x n_classes, and the dataset each LoRA was trained on holds exactly 7 images
    of each of its classes."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from diffusion_toy import (
        TINY_PIXEL_UNET,
        save_tiny_bert,
        save_tiny_clip,
        write_tiny_fashion_mnist,
    )
    from typer.testing import CliRunner

    import lolscan.zoo.diffusion_recipe as dr
    from lolscan.cli.app import _register, app
    from lolscan.zoo.build import read_zoo_rows
    from lolscan.zoo.images import FASHION_MNIST_CLASSES
    from lolscan.zoo.pixel_base import create_pixel_base

    save_tiny_bert(tmp_path / "bert")
    create_pixel_base(tmp_path / "base", str(tmp_path / "bert"), unet=TINY_PIXEL_UNET, copy_text_encoder=True)
    write_tiny_fashion_mnist(tmp_path / "fmnist")
    save_tiny_clip(tmp_path / "clip")
    recipe = tmp_path / "small.toml"
    recipe.write_text(f'extends = "{RECIPES / "inhouse-mix-fashion-classes.toml"}"\n[base]\nresolution = 16\n'
                      '[hparams]\nsteps = { int_uniform = [2, 3] }\nbatch_size = 2\n'
                      f'[labels]\nclip_model = "{tmp_path / "clip"}"\nprompts = ["a photo of a Bag", "a grey Bag"]\n'
                      'seeds = [0, 1]\nsteps = 2\nbatch = 4\n')
    built = {}
    real = dr.DiffusionSpec.dataset

    def spy(self, recipe, source, size):
        out = real(self, recipe, source, size)
        built[self.id] = out
        return out

    monkeypatch.setattr(dr.DiffusionSpec, "dataset", spy)
    _register()
    res = CliRunner().invoke(app, ["zoo", "build", str(recipe), str(tmp_path / "zoo"), "--base-path",
                                   str(tmp_path / "base"), "--data-root", str(tmp_path / "fmnist"), "--device", "cpu",
                                   "--n-loras", "3", "--group-size", "3"])
    assert res.exit_code == 0, res.output
    rows = read_zoo_rows(tmp_path / "zoo" / "manifest.jsonl")
    info = json.loads((tmp_path / "zoo" / "zoo.json").read_text())
    data = info["recipe"]["data"]
    assert (data["images_per_class"], data["class_subsets"], data["subset_repeat"]) == (7, "all", 2)
    assert "dataset_size" not in data and "class_p" not in data and info["recipe"]["n_loras"] == 3
    order = class_subset_order(0, 10, 2)
    names = [f"cls_{c}" for c in FASHION_MNIST_CLASSES]  # the source's class order
    assert len(rows) == 3 and set(built) == {r["id"] for r in rows}
    for row in rows:
        i = int(row["id"].removeprefix("lora-"))
        assert row["finite"] and row["n_classes"] == len(row["classes"]) == sum(row[c] for c in names)
        assert [row[c] for c in names] == order[i].astype(int).tolist()  # the recipe seed's subset order
        assert row["dataset_size"] == 7 * row["n_classes"]
        imgs, classes, caps = built[row["id"]]
        assert len(imgs) == len(caps) == row["dataset_size"]
        assert Counter(classes) == {c: 7 for c in row["classes"]}
