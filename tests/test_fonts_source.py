"""The ``fonts`` image source and the identity zoo's attribute columns, against independent truth.

Always run: Pillow's own font (Aileron Regular, which ``ImageFont.load_default(size)`` builds from bytes
inside Pillow ≥ 10.1 with FreeType) written to a file here, and a copy whose OS/2 and post table bytes are
patched here with `struct` (weight 700, italic, fixed pitch) — so the attributes are checked against bytes
this test wrote, and the serif measure against glyphs that did not change. With Debian's fonts-urw-base35
(or $LOLSCAN_FONTS) installed: the 35 URW fonts' attributes against what their names and advance widths
say; with fonts-dejavu-core: the serif measure against the fonts' own PANOSE serif style."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lolscan.errors import EXIT_BAD_INPUT, InputError, UsageError
from lolscan.zoo.fonts import FONTS_DIR, Fonts, font_attributes
from lolscan.zoo.images import get_source

ROOT = Path(__file__).resolve().parent.parent
URW = Path(os.environ.get("LOLSCAN_FONTS") or FONTS_DIR)
HAVE_URW = (URW / "NimbusSans-BoldItalic.otf").is_file()
DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
SYMBOLS = ["StandardSymbolsPS.*", "D050000L.*"]


def pillow_font_bytes() -> bytes:
    from PIL import ImageFont, features

    if not features.check("freetype2"):
        pytest.skip("Pillow without FreeType")
    f = ImageFont.load_default(size=12)
    if not isinstance(getattr(f, "path", None), io.BytesIO):
        pytest.skip("this Pillow's load_default(size) is not a FreeType font from bytes (Pillow < 10.1)")
    return f.path.getvalue()


def table_offsets(data: bytes) -> dict[str, int]:
    n = struct.unpack(">H", data[4:6])[0]
    return {data[12 + 16 * i:16 + 16 * i].decode("latin-1"): struct.unpack(">I", data[20 + 16 * i:24 + 16 * i])[0]
            for i in range(n)}


@pytest.fixture()
def two_fonts(tmp_path):
    """Aileron-Regular.ttf as Pillow holds it, and Aileron-Patched.ttf: OS/2 usWeightClass 700, fsSelection
    ITALIC (not REGULAR), post isFixedPitch 1; glyphs and names unchanged."""
    data = pillow_font_bytes()
    folder = tmp_path / "fonts"
    folder.mkdir()
    (folder / "Aileron-Regular.ttf").write_bytes(data)
    b = bytearray(data)
    t = table_offsets(data)
    struct.pack_into(">H", b, t["OS/2"] + 4, 700)
    struct.pack_into(">H", b, t["OS/2"] + 62, 0x1)
    struct.pack_into(">I", b, t["post"] + 12, 1)
    (folder / "Aileron-Patched.ttf").write_bytes(bytes(b))
    return folder


def src(folder, **opts) -> Fonts:
    return get_source("fonts", {"font_dir": str(folder), "pattern": "*.ttf", **opts})


def test_images_are_seeded_glyphs_of_the_asked_size(two_fonts):
    s = src(two_fonts)
    assert s.name == "fonts" and s.classes == list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    assert s.styles == ["Aileron-Patched", "Aileron-Regular"] and s.skipped == {}
    img = s.image("A", "Aileron-Regular", 32, np.random.default_rng(0))
    assert img.shape == (32, 32, 3) and img.dtype == np.float32 and img.min() >= 0 and img.max() <= 1
    assert np.array_equal(img[..., 0], img[..., 2]) and img.max() > 0.9 and 0.03 < img.mean() < 0.4
    again = s.image("A", "Aileron-Regular", 32, np.random.default_rng(0))
    assert np.array_equal(img, again)  # the generator decides
    assert not np.array_equal(img, s.image("A", "Aileron-Regular", 32, np.random.default_rng(1)))  # jitter
    glyphs = [s.image(c, "Aileron-Regular", 32, np.random.default_rng(5)) for c in s.classes]
    assert all(not np.array_equal(glyphs[i], glyphs[j]) for i in range(26) for j in range(i))
    assert get_source("fonts", {"font_dir": str(two_fonts), "pattern": "*.ttf"}).version == s.version
    assert s.version.startswith("1+")


def test_without_jitter_a_glyph_is_centred_at_the_scale(two_fonts):
    s = src(two_fonts, jitter=0.0, scale=0.5)
    for cls in "HOXT":
        ink = s.image(cls, "Aileron-Regular", 64, np.random.default_rng(0))[..., 0] > 0.5
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        assert abs((rows[0] + rows[-1] + 1) / 2 - 32) <= 1 and abs((cols[0] + cols[-1] + 1) / 2 - 32) <= 1
        assert abs(rows[-1] + 1 - rows[0] - 32) <= 2  # a capital is half the side high
    big = src(two_fonts, jitter=0.0, scale=0.8).image("H", "Aileron-Regular", 64, np.random.default_rng(0))
    assert abs(np.ptp(np.flatnonzero((big[..., 0] > 0.5).any(1))) + 1 - 51) <= 2


def test_attributes_come_from_the_font_tables_and_glyphs(two_fonts):
    regular = font_attributes(two_fonts / "Aileron-Regular.ttf")
    assert regular == {"family": "Aileron", "face": "Regular", "weight": 400, "bold": 0, "italic": 0, "mono": 0,
                       "serif": 0}
    patched = src(two_fonts).attributes("Aileron-Patched")
    assert patched == {**regular, "weight": 700, "bold": 1, "italic": 1, "mono": 1}  # names and glyphs unchanged


def test_no_fonts_is_exit_3_naming_the_package(tmp_path, monkeypatch, two_fonts):
    monkeypatch.delenv("LOLSCAN_FONTS", raising=False)
    s = get_source("fonts", {"font_dir": str(tmp_path / "nowhere")})  # nothing is read yet
    with pytest.raises(InputError) as e:
        s.check()
    assert e.value.exit_code == EXIT_BAD_INPUT == 3
    assert "apt install fonts-urw-base35" in str(e.value) and "nowhere" in str(e.value)
    with pytest.raises(InputError):
        s.styles  # noqa: B018  (drawing specs needs the fonts too)
    monkeypatch.setenv("LOLSCAN_FONTS", str(tmp_path / "elsewhere"))
    assert "elsewhere" in str(pytest.raises(InputError, get_source("fonts").check).value)
    assert get_source("fonts").root == tmp_path / "elsewhere"
    assert get_source("fonts", {"font_dir": "/x"}).root == Path("/x")  # the recipe's wins over the variable
    assert get_source("fonts", {"font_dir": "/x", "data_root": "/y"}).root == Path("/y")  # --data-root wins
    e = pytest.raises(InputError, src(two_fonts, exclude=["Aileron-*"]).check)
    assert "apt install fonts-urw-base35" in str(e.value)
    with pytest.raises(UsageError):
        get_source("fonts", {"glyphs": "AA"})


def test_fonts_that_cannot_draw_the_glyphs_are_left_out(two_fonts):
    (two_fonts / "junk.ttf").write_bytes(b"not a font at all")
    s = src(two_fonts, glyphs="AB\u2603")  # Pillow's Aileron has no snowman
    with pytest.raises(InputError, match="no usable font") as e:
        s.check()
    assert s.skipped["junk"].startswith("unreadable") and "\u2603" in s.skipped["Aileron-Regular"]
    assert "junk" in str(e.value) and "\u2603" in str(e.value)  # the message says why each was left out
    ok = src(two_fonts, glyphs="AB")
    assert ok.styles == ["Aileron-Patched", "Aileron-Regular"] and list(ok.skipped) == ["junk"]


def test_cli_zoo_build_without_fonts_exits_3(tmp_path):
    recipe = tmp_path / "fonts.toml"
    recipe.write_text('name = "f"\nseed = 0\nn_loras = 2\n[base]\nkind = "pixel"\npath = "no/such-base"\n'
                      '[hparams]\nlr = 1e-4\nsteps = 2\nbatch_size = 1\nweight_decay = 0.0\n'
                      '[data]\nsource = "fonts"\ntemplates = ["the letter {cls}"]\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "lolscan", "zoo", "build", str(recipe), str(tmp_path / "zoo"),
                        "--data-root", str(tmp_path / "nowhere")], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert p.returncode == 3, p.stderr
    text = " ".join(p.stderr.replace("│", " ").split())
    assert "apt install fonts-urw-base35" in text and "nowhere" in text and "Traceback" not in p.stderr


def test_shipped_identity_recipe():
    from lolscan.zoo.diffusion_recipe import DiffusionRecipe, load_recipe, sample_specs

    r = load_recipe(ROOT / "recipes" / "inhouse-fonts-identity.toml")
    assert isinstance(r, DiffusionRecipe) and r.n_loras >= 2000 and r.base["kind"] == "pixel"
    assert r.data.source == "fonts" and r.data.styles and all("{style}" not in t for t in r.data.templates)
    s = get_source(r.data.source, r.data.source_options)  # the options are the source's
    assert {p.removeprefix("the letter ") for p in r.labels.prompts} <= set(s.classes)
    assert (len(r.labels.prompts) * len(r.labels.seeds)) % r.labels.batch == 0  # whole sampling batches
    assert "the letter {cls}" in s.templates  # base and scorer are trained on the prompts' captions
    assert len(r.labels.seeds) >= 2  # per-seed columns: the label's split-half noise
    if not HAVE_URW:
        pytest.skip("fonts-urw-base35 not installed: the recipe's draws are not checked")
    specs = sample_specs(r, s)
    assert len(s.styles) == 33 and {x.style for x in specs} == set(s.styles)
    counts = np.array([sum(x.style == st for x in specs) for st in s.styles])
    assert counts.min() > 30 and counts.max() < 100  # one font per LoRA, uniform: ~62 each
    sizes = np.array([len(x.classes) for x in specs])
    assert sizes.min() >= 1 and abs(sizes.mean() - 26 * 0.3) < 0.3


@pytest.mark.skipif(not HAVE_URW, reason="fonts-urw-base35 not installed")
def test_the_urw_fonts_attributes_agree_with_their_names_and_widths():
    from PIL import ImageFont

    everything = get_source("fonts", {"font_dir": str(URW)})
    assert len(everything.styles) == 35  # the symbol fonts draw something for A–Z too: the recipe excludes them
    s = get_source("fonts", {"font_dir": str(URW), "exclude": SYMBOLS})
    assert len(s.styles) == 33 and s.skipped == {}
    for style in s.styles:
        a = s.attributes(style)
        font = ImageFont.truetype(str(URW / f"{style}.otf"), 40)
        assert (a["family"], a["face"]) == font.getname()
        words = a["face"].split()
        assert a["italic"] == int("Italic" in words or "Oblique" in words), style
        assert a["bold"] == int("Bold" in words or "Demi" in words), style
        assert a["mono"] == int(font.getlength("i") == font.getlength("W")), style
        assert a["serif"] == int(a["family"] not in ("Nimbus Sans", "Nimbus Sans Narrow", "URW Gothic")), style
    assert s.attributes("NimbusSans-BoldItalic") == {"family": "Nimbus Sans", "face": "Bold Italic", "weight": 700,
                                                     "bold": 1, "italic": 1, "mono": 0, "serif": 0}
    assert s.attributes("NimbusMonoPS-Regular")["mono"] == 1 and s.attributes("URWBookman-Light")["weight"] == 300
    imgs = {st: s.image("R", st, 32, np.random.default_rng(0)) for st in s.styles}
    assert len({v.tobytes() for v in imgs.values()}) == 33  # every identity draws its own R


@pytest.mark.skipif(not (DEJAVU / "DejaVuSerif.ttf").is_file(), reason="fonts-dejavu-core not installed")
def test_serif_measure_agrees_with_panose():
    """PANOSE bSerifStyle (OS/2 byte 34; family kind 2, Latin text): 2–10 serif, 11–13 sans."""
    checked = 0
    for p in sorted(DEJAVU.glob("*.ttf")):
        data = p.read_bytes()
        os2 = table_offsets(data)["OS/2"]
        family_kind, serif_style = data[os2 + 32], data[os2 + 33]
        if family_kind != 2 or not 2 <= serif_style <= 13:
            continue
        assert font_attributes(p)["serif"] == int(serif_style <= 10), p.name
        checked += 1
    assert checked >= 4


def test_two_lora_identity_zoo_writes_each_fonts_attributes(two_fonts, tmp_path, monkeypatch):
    """A base trained 2 steps on the fonts by scripts/inhouse_base.py, then a 2-LoRA zoo of two identities:
    every row's attr_* columns are its font's, and its LoRA was finetuned on images of that font only."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from diffusion_toy import (
        TINY_PIXEL_UNET,
        save_tiny_bert,
        save_tiny_clip,
        toy_diffusion_recipe,
    )
    from helpers import load_script

    import lolscan.zoo.diffusion as zd
    from lolscan.zoo.build import read_zoo_rows
    from lolscan.zoo.clipscore import ClipScorer
    from lolscan.zoo.diffusion_recipe import DiffusionRecipe, sample_specs

    script = load_script("scripts/inhouse_base.py").main
    opts = {"font_dir": str(two_fonts), "pattern": "*.ttf"}
    save_tiny_bert(tmp_path / "bert")
    assert script(["create", str(tmp_path / "base"), "--text-encoder", str(tmp_path / "bert"), "--copy-text-encoder",
                   "--unet", json.dumps(TINY_PIXEL_UNET)]) == 0
    assert script(["train", str(tmp_path / "base"), "--source", "fonts", "--source-options", json.dumps(opts),
                   "--steps", "2", "--batch-size", "2"]) == 0
    save_tiny_clip(tmp_path / "clip")
    source = src(two_fonts)
    for seed in range(50):  # a seed whose two LoRAs are of the two fonts
        d = toy_diffusion_recipe(tmp_path / "base", tmp_path / "clip", n_loras=2, group_size=2, seed=seed,
                                 base={"kind": "pixel", "path": str(tmp_path / "base"), "name": "tiny-pixel"})
        d["data"].update(source="fonts", source_options=opts, styles=True, class_p=0.3,
                         templates=["the letter {cls}"])
        d["labels"]["prompts"] = ["the letter a", "the letter r"]
        recipe = DiffusionRecipe.from_dict(d)
        if len({x.style for x in sample_specs(recipe, source)}) == 2:
            break
    drawn: list[tuple[str, str]] = []
    real_image = Fonts.image

    def spy(self, cls, style, size, rng):
        drawn.append((cls, style))
        return real_image(self, cls, style, size, rng)

    monkeypatch.setattr(Fonts, "image", spy)
    rep = zd.build_diffusion(recipe, tmp_path / "zoo", clip=ClipScorer.load(str(tmp_path / "clip")), log=lambda s: None)
    assert rep.complete
    rows = read_zoo_rows(tmp_path / "zoo" / "manifest.jsonl")
    info = json.loads((tmp_path / "zoo" / "zoo.json").read_text())
    assert info["data"]["source"] == "fonts" and info["data"]["version"] == source.version
    assert sorted(r["style"] for r in rows) == ["Aileron-Patched", "Aileron-Regular"]
    truth = {"Aileron-Regular": (400, 0, 0, 0), "Aileron-Patched": (700, 1, 1, 1)}
    specs = {x.id: x for x in sample_specs(recipe, source)}
    assert len(drawn) == sum(x.dataset_size for x in specs.values())
    for r in rows:
        assert (r["attr_weight"], r["attr_bold"], r["attr_italic"], r["attr_mono"]) == truth[r["style"]]
        assert r["attr_serif"] == 0 and r["attr_family"] == "Aileron" and r["attr_face"] == "Regular"
        assert r["attributes"] == (["bold", "italic", "mono"] if r["style"] == "Aileron-Patched" else [])  # multilabel
        assert r["cls_A"] == int("A" in r["classes"]) and r["finite"]
        n = specs[r["id"]].dataset_size  # its images: its classes in turn, all of its font
        assert [c for c, st in drawn if st == r["style"]] == [r["classes"][j % len(r["classes"])] for j in range(n)]
