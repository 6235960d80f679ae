"""The ``mix`` image source (Fashion-MNIST + fonts, or shapes + fonts, as one) and the trainers' ``pair(rng)``.

Offline and without Debian packages: Fashion-MNIST from tiny IDX files written here (diffusion_toy), fonts
from Pillow's own Aileron written to files here (test_fonts_source). Pairs are always a class with a style of
its own part and each part is drawn in proportion to its weight; an image is the owning part's image for the
same generator state; a class name two parts share is refused; a seed gives the same draws; a source
without ``pair`` draws and trains exactly as before (an inline copy of the old draw logic); the held-out
images of a mix are each part's; the scripts train a tiny base and a tiny scorer on a mix."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusion_toy import write_idx, write_tiny_fashion_mnist
from helpers import load_script
from test_fonts_source import pillow_font_bytes

from lolscan.errors import InputError, UsageError
from lolscan.zoo import inhouse_clip as ic
from lolscan.zoo.images import SOURCES, FashionMNIST, Shapes, get_source, open_source
from lolscan.zoo.mix import Mix

TINY_CLIP = {"image_size": 16, "patch_size": 4, "vision_hidden": 32, "vision_layers": 1, "vision_heads": 2,
             "text_hidden": 32, "text_layers": 1, "text_heads": 2, "projection_dim": 16, "max_length": 16}


@pytest.fixture()
def data(tmp_path):
    """Tiny Fashion-MNIST (train and test IDX files) and a folder of two Aileron fonts."""
    fm = tmp_path / "fm"
    write_tiny_fashion_mnist(fm)
    rng = np.random.default_rng(11)
    write_idx(fm / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), gz=False)
    write_idx(fm / "t10k-labels-idx1-ubyte", np.repeat(np.arange(10), 2).astype(np.uint8), gz=False)
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    raw = pillow_font_bytes()
    (fonts / "Aileron-Regular.ttf").write_bytes(raw)
    (fonts / "Aileron-Copy.ttf").write_bytes(raw)
    return fm, fonts


def opts(fm: Path, fonts: Path, **more) -> dict:
    return {"sources": ["fashion_mnist", "fonts"],
            "options": {"fashion_mnist": {"data_root": str(fm)}, "fonts": {"font_dir": str(fonts), "pattern": "*.ttf"}},
            **more}


def test_classes_styles_version_and_check(data):
    fm, fonts = data
    mix = open_source("mix", opts(fm, fonts))
    assert isinstance(mix, Mix) and mix.name == "mix"
    assert mix.classes == list(FashionMNIST().classes) + list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    assert mix.styles == ["grey", "red", "green", "blue", "yellow", "Aileron-Copy", "Aileron-Regular"]
    fv = get_source("fonts", {"font_dir": str(fonts), "pattern": "*.ttf"}).version
    assert mix.version == f"1(fashion_mnist=1+fonts={fv};w=1,1)"
    assert open_source("mix", opts(fm, fonts, weights=[1, 3])).version.endswith(";w=1,3)")
    # check() is each part's: exit 3 naming what to install
    with pytest.raises(InputError, match="dataset-fashion-mnist") as e:
        open_source("mix", opts(fm / "nowhere", fonts))
    assert e.value.exit_code == 3
    with pytest.raises(InputError, match="fonts-urw-base35") as e:
        open_source("mix", opts(fm, fonts / "nowhere"))
    assert e.value.exit_code == 3


def test_pairs_are_valid_and_parts_drawn_by_weight(data):
    fm, fonts = data
    mix = open_source("mix", opts(fm, fonts, weights={"fashion_mnist": 1, "fonts": 3}))
    fashion, font = mix.parts
    rng = np.random.default_rng(0)
    pairs = [mix.pair(rng) for _ in range(4000)]
    in_fonts = [c in font.classes for c, _ in pairs]
    for c, s in pairs:
        assert s in (font.styles if c in font.classes else fashion.styles)
    assert abs(np.mean(in_fonts) - 0.75) < 0.03  # 3 : 1 (binomial sd 0.007)
    assert {c for c, _ in pairs} == set(mix.classes) and {s for _, s in pairs} == set(mix.styles)
    # within a part, classes and styles are uniform
    counts = np.unique([c for c, _ in pairs if c in fashion.classes], return_counts=True)[1]
    assert counts.min() > 0.6 * counts.mean()
    # weight 0: never drawn
    only = open_source("mix", opts(fm, fonts, weights=[0, 1]))
    assert all(c in font.classes for c, _ in (only.pair(rng) for _ in range(200)))
    # deterministic for a seed
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert [mix.pair(a) for _ in range(50)] == [mix.pair(b) for _ in range(50)]


def test_images_are_the_owning_sources_and_foreign_pairs_are_refused(data):
    fm, fonts = data
    mix = open_source("mix", opts(fm, fonts))
    fashion = get_source("fashion_mnist", {"data_root": str(fm)})
    font = get_source("fonts", {"font_dir": str(fonts), "pattern": "*.ttf"})
    for cls, style, own in [("Bag", "red", fashion), ("Q", "Aileron-Regular", font), ("A", "Aileron-Copy", font)]:
        a, b = np.random.default_rng(9), np.random.default_rng(9)
        got, want = mix.image(cls, style, 16, a), own.image(cls, style, 16, b)
        assert got.shape == (16, 16, 3) and got.dtype == np.float32 and np.array_equal(got, want)
        assert a.bit_generator.state == b.bit_generator.state
    with pytest.raises(UsageError, match="'Bag' is fashion_mnist's and style 'Aileron-Regular' is not"):
        mix.image("Bag", "Aileron-Regular", 16, np.random.default_rng(0))
    with pytest.raises(UsageError, match="style 'red' is not"):
        mix.image("A", "red", 16, np.random.default_rng(0))
    with pytest.raises(UsageError, match="unknown class 'Z!'"):
        mix.image("Z!", "red", 16, np.random.default_rng(0))


@dataclass
class LoudShapes(Shapes):
    name: str = "loud_shapes"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.classes = ["hexagon", "CIRCLE"]


def test_a_shared_class_name_and_bad_options_are_refused(monkeypatch, data):
    fm, _ = data
    monkeypatch.setitem(SOURCES, "loud_shapes", LoudShapes)
    with pytest.raises(UsageError, match="class 'CIRCLE' of loud_shapes and class 'circle' of shapes share a name"):
        get_source("mix", {"sources": ["shapes", "loud_shapes"]})
    with pytest.raises(UsageError, match="named twice"):
        get_source("mix", {"sources": ["shapes", "shapes"]})
    with pytest.raises(UsageError, match="sources must be a list"):
        get_source("mix", {})
    with pytest.raises(UsageError, match="give a part's data_root in options"):
        get_source("mix", {"sources": ["shapes"], "data_root": "/x"})
    with pytest.raises(UsageError, match="options for \\['fonts'\\], which are not in sources"):
        get_source("mix", {"sources": ["shapes"], "options": {"fonts": {}}})
    with pytest.raises(UsageError, match="weights"):
        get_source("mix", {"sources": ["shapes", "fonts"], "weights": [1]})
    with pytest.raises(UsageError, match="weights for \\['fnts'\\]"):
        get_source("mix", {"sources": ["shapes", "fonts"], "weights": {"fnts": 2}})
    with pytest.raises(UsageError, match="unknown image source 'nope'"):
        get_source("mix", {"sources": ["shapes", "nope"]})
    # shapes and fashion_mnist share styles (red …): listed once, each class still with its own part's
    mix = get_source("mix", {"sources": ["shapes", "fashion_mnist"], "options": {"fashion_mnist": {"data_root": str(fm)}}})
    assert mix.styles == ["red", "green", "blue", "yellow", "grey"] and mix.styles_for("circle") == mix.styles[:4]


def old_draw_batch(source, n, size, rng, templates):
    """`draw_batch` as it was before ``pair`` (main at d9c9bfd), copied."""
    imgs, caps, ys = [], [], []
    for _ in range(n):
        k = int(rng.integers(len(source.classes)))
        cls, style = source.classes[k], source.styles[int(rng.integers(len(source.styles)))]
        imgs.append(source.image(cls, style, size, rng))
        caps.append(templates[int(rng.integers(len(templates)))].format(cls=cls, style=style))
        ys.append(k)
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous(), caps, ys


def test_draw_batch_of_a_source_without_pair_is_unchanged_and_a_mix_is_seeded(data):
    fm, fonts = data
    src = get_source("shapes")
    a, b = np.random.default_rng(4), np.random.default_rng(4)
    x, caps, ys = ic.draw_batch(src, 24, 16, a, ic.TRAIN_TEMPLATES)
    x0, caps0, ys0 = old_draw_batch(src, 24, 16, b, ic.TRAIN_TEMPLATES)
    assert torch.equal(x, x0) and caps == caps0 and ys == ys0 and a.bit_generator.state == b.bit_generator.state
    mix = open_source("mix", opts(fm, fonts))
    one = ic.draw_batch(mix, 40, 16, np.random.default_rng(1), ic.TRAIN_TEMPLATES)
    two = ic.draw_batch(mix, 40, 16, np.random.default_rng(1), ic.TRAIN_TEMPLATES)
    assert torch.equal(one[0], two[0]) and one[1] == two[1] and one[2] == two[2]
    for cap, y in zip(one[1], one[2]):
        assert mix.classes[y] in cap


def test_held_out_images_of_a_mix_are_each_parts(data):
    fm, fonts = data
    mix = open_source("mix", opts(fm, fonts))
    held = ic.held_out_source(mix)
    assert held is not mix and held.classes == mix.classes and held.weights == mix.weights
    assert held.parts[0].split == "test" and held.parts[1] is mix.parts[1]  # fonts: no held-out fonts
    assert ic.held_out_note(mix, 2) == f"fashion_mnist: split test; fonts: seed stream 2 + {ic.HELD_OUT_STREAM:#x}"
    x, ys = ic.held_out_images(mix, 2, 16, 0)
    assert x.shape == (2 * len(mix.classes), 3, 16, 16) and ys == [k for k in range(len(mix.classes)) for _ in range(2)]
    shapes_mix = get_source("mix", {"sources": ["shapes"]})
    assert ic.held_out_source(shapes_mix) is shapes_mix


def test_the_vocabulary_makes_font_names_words_and_long_captions_are_found(data, tmp_path):
    pytest.importorskip("transformers")
    fm, fonts = data
    (fonts / "NimbusSansNarrow-BoldOblique.ttf").write_bytes((fonts / "Aileron-Copy.ttf").read_bytes())
    mix = open_source("mix", opts(fm, fonts))
    plain = ic.write_tokenizer(tmp_path / "plain", ic.vocabulary_words(), 32)
    words = ic.vocabulary_words(ic.source_words(mix))
    assert {"nimbussansnarrow", "boldoblique", "aileron", "regular", "ankle"} <= set(words)
    tok = ic.write_tokenizer(tmp_path / "tok", words, 32)
    assert tok.tokenize("a picture of a NimbusSansNarrow-BoldOblique A") == [
        "a</w>", "picture</w>", "of</w>", "a</w>", "nimbussansnarrow</w>", "-</w>", "boldoblique</w>", "a</w>"]
    # a class goes only with its own part's styles: the longest is "a picture of a yellow T-shirt/top"
    assert ic.longest_caption(tok, mix, ic.TRAIN_TEMPLATES) == 4 + 1 + 5 + 2
    # spelt out in (partly merged) characters the font name takes 23 tokens
    long = ic.TRAIN_TEMPLATES[2].format(cls="A", style="NimbusSansNarrow-BoldOblique")
    assert ic.longest_caption(plain, mix, ic.TRAIN_TEMPLATES) == len(plain.tokenize(long)) + 2 == 4 + 23 + 1 + 2
    # a scorer of 16 positions made without the mix's words: training says its captions are cut
    fonts_only = open_source("mix", opts(fm, fonts, weights=[0, 1]))
    for name, extra in (("plain", None), ("words", ic.source_words(mix))):
        ic.create_clip(tmp_path / name, config=TINY_CLIP, extra_words=extra)
        said: list[str] = []
        ic.train_clip(tmp_path / name, fonts_only, 1, batch_size=2, save=False, log=said.append)
        # the fonts part's own templates: "the letter A in NimbusSansNarrow-BoldOblique" is its longest
        n = len(plain.tokenize("the letter A in NimbusSansNarrow-BoldOblique")) + 2
        assert any(f"take up to {n} tokens, the text tower 16" in s for s in said) == (extra is None)


def test_scripts_train_a_base_and_a_scorer_on_a_mix(data, tmp_path, capsys):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from diffusion_toy import TINY_PIXEL_UNET, save_tiny_bert

    _, fonts = data
    so = json.dumps({"sources": ["shapes", "fonts"], "weights": [1, 2],
                     "options": {"fonts": {"font_dir": str(fonts), "pattern": "*.ttf"}}})
    base = load_script("scripts/inhouse_base.py")
    save_tiny_bert(tmp_path / "bert")
    assert base.main(["create", str(tmp_path / "base"), "--text-encoder", str(tmp_path / "bert"), "--copy-text-encoder",
                      "--unet", json.dumps(TINY_PIXEL_UNET)]) == 0
    assert base.main(["train", str(tmp_path / "base"), "--source", "mix", "--source-options", so, "--steps", "2",
                      "--batch-size", "3"]) == 0
    info = json.loads((tmp_path / "base" / "base.json").read_text())
    assert info["trained"]["steps"] == 2 and info["trained"]["source"] == "mix"
    assert info["trained"]["source_version"].startswith("1(shapes=1+fonts=1+") and info["trained"]["source_version"].endswith(";w=1,2)")
    bad = json.dumps({"sources": ["shapes", "fonts"], "options": {"fonts": {"font_dir": str(tmp_path / "no")}}})
    assert base.main(["train", str(tmp_path / "base"), "--source", "mix", "--source-options", bad]) == 3

    clip = load_script("scripts/inhouse_clip.py")
    f = str(tmp_path / "clip")
    assert clip.main(["create", f, "--config", json.dumps(TINY_CLIP), "--source", "mix", "--source-options", so]) == 0
    assert clip.main(["train", f, "--source", "mix", "--source-options", so, "--steps", "2", "--batch-size", "6",
                      "--per-class", "1"]) == 0
    out = capsys.readouterr().out
    assert "warning" not in out and "zero-shot accuracy" in out
    card = json.loads((tmp_path / "clip" / ic.CARD).read_text())
    zs = card["zero_shot"]
    assert card["trained"]["source"] == "mix" and zs["n"] == 4 + 26 and set(zs["per_source"]) == {"shapes", "fonts"}
    assert zs["held_out"].startswith("shapes: seed stream 0 + ")
    assert zs["template"] == {"shapes": ic.ZEROSHOT_TEMPLATE, "fonts": "the letter {cls}"}  # each part's own


def test_a_mix_captions_each_class_from_its_own_parts_templates(data):
    """Without templates passed, a mix's class is captioned from its part's ``templates`` (fonts: "the
    letter A"; Fashion-MNIST has none: the trainer's default), so one scorer covers both zoos' prompts;
    an explicit list still wins; the scorer's words include the fonts part's template words."""
    from lolscan.zoo.fonts import TEMPLATES as FONT_TEMPLATES
    from lolscan.zoo.images import caption_templates

    fm, fonts = data
    mix = open_source("mix", opts(fm, fonts))
    assert mix.templates_for("A") == FONT_TEMPLATES and mix.templates_for("Dress") is None
    assert caption_templates(mix, "Dress", None, ic.TRAIN_TEMPLATES) == ic.TRAIN_TEMPLATES
    assert caption_templates(mix, "A", ["x {cls}"], ic.TRAIN_TEMPLATES) == ["x {cls}"]
    _, caps, ys = ic.draw_batch(mix, 200, 16, np.random.default_rng(0), None)
    font = [c for c, y in zip(caps, ys) if mix.classes[y] in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    garment = [c for c, y in zip(caps, ys) if mix.classes[y] not in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    assert font and garment and all("letter" in c or len(c) == 1 for c in font)
    assert not any("letter" in c for c in garment) and any(c.startswith("a photo of a ") for c in garment)
    assert "letter" in ic.vocabulary_words(ic.source_words(mix))


def test_a_source_without_pair_trains_as_before(tmp_path):
    """`train_pixel_base` on shapes equals a run on a source whose ``pair`` is the old draw logic written
    out (so the no-pair path still makes those draws), and `pair` is what a mix-aware trainer calls."""
    pytest.importorskip("diffusers")
    from diffusion_toy import TINY_PIXEL_UNET, save_tiny_bert

    from lolscan.zoo.pixel_base import create_pixel_base, train_pixel_base

    class OldPairShapes(Shapes):
        calls = 0

        def pair(self, rng):
            OldPairShapes.calls += 1
            return self.classes[int(rng.integers(len(self.classes)))], self.styles[int(rng.integers(len(self.styles)))]

    save_tiny_bert(tmp_path / "bert")
    create_pixel_base(tmp_path / "base", str(tmp_path / "bert"), unet=TINY_PIXEL_UNET, copy_text_encoder=True)
    plain = train_pixel_base(tmp_path / "base", Shapes(), 3, batch_size=4, seed=5, save=False)
    paired = train_pixel_base(tmp_path / "base", OldPairShapes(), 3, batch_size=4, seed=5, save=False)
    assert OldPairShapes.calls == 12 and plain == paired


def test_a_zoo_on_a_mix_is_refused_before_the_base_loads(tmp_path):
    from diffusion_toy import toy_diffusion_recipe

    from lolscan.zoo.diffusion import build_diffusion
    from lolscan.zoo.diffusion_recipe import DiffusionRecipe

    d = toy_diffusion_recipe(tmp_path / "no-pipe", tmp_path / "no-clip")
    d["data"] = {**d["data"], "source": "mix", "source_options": {"sources": ["shapes"]}}
    with pytest.raises(UsageError, match="build each zoo on one of its sources"):
        build_diffusion(DiffusionRecipe.from_dict(d), tmp_path / "zoo")
