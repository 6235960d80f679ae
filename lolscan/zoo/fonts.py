"""The ``fonts`` image source: one identity per font file, its glyphs as classes (the CelebA-LoRA analogue).

A diffusion zoo with ``[data] source = "fonts"`` and ``styles = true`` personalises each LoRA to one font
(its style, drawn per LoRA) on a random subset of the glyphs (its classes). The fonts are read where a
package installed them: by default Debian's ``fonts-urw-base35`` (``apt install fonts-urw-base35``: the 35
PostScript core fonts as OpenType in /usr/share/fonts/opentype/urw-base35 — Nimbus Roman/Sans/Sans
Narrow/Mono PS, URW Bookman, URW Gothic, C059, P052, Z003, in their regular/bold/italic faces, and two
symbol fonts a recipe leaves out with ``exclude``), or ``font_dir`` (``[data.source_options]``),
``--data-root`` or $LOLSCAN_FONTS. No font file is part of lolscan.

Each font has attributes (`font_attributes`), read from the font itself, which the zoo writes as label
columns ``attr_<name>`` of every LoRA of that font: ``family`` and ``face`` (the name table, as FreeType
reports it), ``weight`` (OS/2 usWeightClass), ``bold`` (weight ≥ 600: URW's "Demi" faces count),
``italic`` (OS/2 fsSelection ITALIC or OBLIQUE, or head macStyle italic), ``mono`` (post isFixedPitch) and
``serif``, measured on the rendered "T": the ink at the foot of its stem is wider than the stem (serif
fonts ≥ 2×, sans ≈ 1×; the URW fonts and DejaVu's PANOSE serif styles agree). Images: the glyph in white on
black (as the Fashion-MNIST source's garments), drawn at 4× and box-filtered down, its size set so the
font's median glyph height is ``scale`` of the side, then jittered in size and position by the generator.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError, UsageError

FONTS_DIR = "/usr/share/fonts/opentype/urw-base35"  # where Debian's fonts-urw-base35 puts its OpenType files
FONTS_ENV = "LOLSCAN_FONTS"
FONTS_PACKAGE = "fonts-urw-base35"
# The capital Latin letters: every text font has them, they share one height (so one scale fits a font's
# whole set), they are distinct at 32 px where lowercase x-height shapes are not, and bold, italic and
# serifs show on all of them.
GLYPHS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SUPERSAMPLE = 4
REF_PX = 64  # size at which a font's glyphs are checked and measured when the source lists its fonts
SERIF_RATIO = 1.5  # foot of the "T" wider than this many stem widths: a serif font
# The captions a base or a scorer is trained on for this source (`train_pixel_base`, `train_clip`): the
# identity recipes' prompts ("the letter A") among them, so the scorer has seen the captions it scores,
# and the font named in some, so the base can draw every font.
TEMPLATES = ["the letter {cls}", "a letter {cls}", "{cls}", "the letter {cls} in {style}", "a {style} letter {cls}"]


def sfnt_tables(data: bytes) -> dict[str, bytes]:
    """The tables of an OpenType/TrueType file (the first font of a collection), by tag."""
    off = 0
    if data[:4] == b"ttcf":
        off = struct.unpack(">I", data[12:16])[0]
    if data[off:off + 4] not in (b"\x00\x01\x00\x00", b"OTTO", b"true"):
        raise ValueError("not an OpenType/TrueType font")
    n = struct.unpack(">H", data[off + 4:off + 6])[0]
    out = {}
    for i in range(n):
        tag, _, start, length = struct.unpack(">4sIII", data[off + 12 + 16 * i:off + 28 + 16 * i])
        if start + length > len(data):
            raise ValueError(f"table {tag!r} runs past the end of the file")
        out[tag.decode("latin-1")] = data[start:start + length]
    return out


def _u16(table: bytes, at: int, default: int = 0) -> int:
    return struct.unpack(">H", table[at:at + 2])[0] if len(table) >= at + 2 else default


def _ink(font, ch: str, pad: int = 2) -> np.ndarray:
    """The glyph `ch` rendered alone: a bool [h, w] array of its pixels ≥ half intensity (empty: [0, 0])."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(ch)
    if right <= left or bottom <= top:
        return np.zeros((0, 0), dtype=bool)
    im = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad))
    ImageDraw.Draw(im).text((pad - left, pad - top), ch, font=font, fill=255)
    a = np.asarray(im) >= 128
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    if not len(rows):
        return np.zeros((0, 0), dtype=bool)
    return a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def serif_ratio(font) -> float:
    """Width of the "T"'s ink in its bottom tenth over the stem's median width between half and 85 % of its
    height: ≈ 1 for a sans (a plain stem), ≥ 2 where a serif closes the stem."""
    a = _ink(font, "T")
    if a.size == 0:
        return float("nan")
    ext = np.array([(np.flatnonzero(r)[-1] - np.flatnonzero(r)[0] + 1) if r.any() else 0 for r in a], dtype=float)
    h = len(ext)
    stem = np.median(ext[h // 2: max(h // 2 + 1, 17 * h // 20)])
    return float(ext[-max(1, h // 10):].max() / max(stem, 1.0))


def font_attributes(path: str | Path) -> dict[str, Any]:
    """What the font file says of itself (see the module docstring): family, face, weight, bold, italic,
    mono, serif (1/0; serif -1 where the font draws no "T")."""
    from PIL import ImageFont

    data = Path(path).read_bytes()
    tables = sfnt_tables(data)
    font = ImageFont.truetype(str(path), 96)
    family, face = font.getname()
    os2, head, post = tables.get("OS/2", b""), tables.get("head", b""), tables.get("post", b"")
    mac = _u16(head, 44)
    weight = _u16(os2, 4, 700 if mac & 1 else 400)
    fs = _u16(os2, 62)
    fixed = struct.unpack(">I", post[12:16])[0] if len(post) >= 16 else 0
    ratio = serif_ratio(font)
    return {"family": family or "", "face": face or "", "weight": int(weight), "bold": int(weight >= 600),
            "italic": int(bool(fs & 0x1 or fs & 0x200 or mac & 0x2)), "mono": int(fixed != 0),
            "serif": -1 if np.isnan(ratio) else int(ratio > SERIF_RATIO)}


@dataclass
class _Font:
    path: Path
    height: float  # median ink height of the source's glyphs at REF_PX, in pixels


@dataclass
class Fonts:
    """Glyphs of the font files in a folder: class = glyph (one character), style = font (its file name
    without the suffix, relative to the folder). See the module docstring.

    Options (``[data.source_options]``): ``font_dir`` (default $LOLSCAN_FONTS, else Debian's
    fonts-urw-base35 folder; ``data_root``, which ``--data-root`` sets, wins over both), ``pattern`` (a glob
    under the folder: ``"**/*.ttf"`` looks in subfolders), ``exclude`` (file-name globs left out),
    ``glyphs`` (the classes, one character each), ``scale`` (median glyph height over the image side) and
    ``jitter`` (± relative size change and ± shift, as a fraction of the side, drawn per image). A font that
    cannot be opened, is not OpenType/TrueType, or draws a glyph as nothing or as its missing-glyph box is
    left out (`skipped` says why)."""

    font_dir: str | None = None
    data_root: str | None = None
    pattern: str = "*.otf"
    exclude: list[str] = field(default_factory=list)
    glyphs: str = GLYPHS
    scale: float = 0.55
    jitter: float = 0.08
    name: str = "fonts"
    templates: ClassVar[list[str]] = TEMPLATES
    skipped: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _fonts: dict[str, _Font] | None = field(default=None, init=False, repr=False)
    _cache: dict[tuple[str, int], Any] = field(default_factory=dict, init=False, repr=False)
    _attrs: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)
    _version: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.glyphs, str) or not self.glyphs or len(set(self.glyphs)) != len(self.glyphs) \
                or any(c.isspace() for c in self.glyphs):
            raise UsageError(f"fonts source: glyphs must be distinct non-space characters, not {self.glyphs!r}")
        if not 0.05 <= self.scale <= 1.0 or not 0.0 <= self.jitter < 0.5:
            raise UsageError("fonts source: scale must be in [0.05, 1] and jitter in [0, 0.5)")
        if isinstance(self.exclude, str):
            self.exclude = [self.exclude]
        self.classes = list(self.glyphs)

    @property
    def root(self) -> Path:
        return Path(self.data_root or self.font_dir or os.environ.get(FONTS_ENV) or FONTS_DIR).expanduser()

    def fonts(self) -> dict[str, _Font]:
        """The usable fonts by style name (sorted), listed and checked once."""
        if self._fonts is None:
            try:
                from PIL import ImageFont, features
            except ImportError:
                raise InputError("the fonts source needs Pillow (pip install pillow)") from None
            if not features.check("freetype2"):
                raise InputError("the fonts source needs Pillow built with FreeType (features.check('freetype2'))")
            found: dict[str, _Font] = {}
            paths = sorted(p for p in self.root.glob(self.pattern) if p.is_file()) if self.root.is_dir() else []
            for p in paths:
                if any(fnmatch.fnmatch(p.name, x) for x in self.exclude):
                    continue
                style = p.relative_to(self.root).with_suffix("").as_posix()
                try:
                    sfnt_tables(p.read_bytes())
                    font = ImageFont.truetype(str(p), REF_PX)
                except (OSError, ValueError, struct.error) as exc:
                    self.skipped[style] = f"unreadable: {exc}"
                    continue
                notdef = _ink(font, "\uffff")  # a code point no font maps: its .notdef glyph
                heights, bad = [], []
                for c in self.classes:
                    ink = _ink(font, c)
                    if ink.size == 0 or (ink.shape == notdef.shape and np.array_equal(ink, notdef)):
                        bad.append(c)
                    else:
                        heights.append(ink.shape[0])
                if bad:
                    self.skipped[style] = f"draws no glyph for {''.join(bad)!r}"
                    continue
                found[style] = _Font(p, float(np.median(heights)))
            self._fonts = found
        return self._fonts

    def check(self) -> None:
        """Exit 3 (`InputError`) naming the package to install when no usable font is found."""
        if not self.fonts():
            why = f" ({len(self.skipped)} left out: {'; '.join(f'{k}: {v}' for k, v in list(self.skipped.items())[:3])})" \
                if self.skipped else ""
            raise InputError(f"fonts source: no usable font matching {self.pattern!r} in {self.root}{why}; install "
                             f"them with `apt install {FONTS_PACKAGE}` (or set font_dir in [data.source_options], "
                             f"or ${FONTS_ENV}, to a folder of OpenType/TrueType files)")

    @property
    def styles(self) -> list[str]:
        self.check()
        return list(self.fonts())

    @property
    def version(self) -> str:
        """"1+" and a hash of the fonts' names and bytes: another set of fonts is another zoo's data."""
        if self._version is None:
            h = hashlib.sha256()
            for style, f in self.fonts().items():
                h.update(style.encode() + b"\0" + hashlib.sha256(f.path.read_bytes()).digest())
            self._version = "1+" + h.hexdigest()[:12]
        return self._version

    def attributes(self, style: str) -> dict[str, Any]:
        """The font's attributes (`font_attributes`), written as ``attr_<name>`` columns of its LoRAs."""
        if style not in self._attrs:
            self._attrs[style] = font_attributes(self._get(style).path)
        return dict(self._attrs[style])

    def _get(self, style: str) -> _Font:
        fonts = self.fonts()
        if style not in fonts:
            raise UsageError(f"fonts source: unknown style {style!r} (a font file in {self.root})")
        return fonts[style]

    def _font(self, style: str, px: int):
        key = (style, px)
        if key not in self._cache:
            from PIL import ImageFont

            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = ImageFont.truetype(str(self._get(style).path), px)
        return self._cache[key]

    def image(self, cls: str, style: str, size: int, rng: np.random.Generator) -> np.ndarray:
        from PIL import Image, ImageDraw

        if cls not in self.classes:
            raise UsageError(f"fonts source: unknown class {cls!r}")
        f = self._get(style)
        rel, dx, dy = rng.uniform(-1.0, 1.0, 3) * self.jitter
        big = size * SUPERSAMPLE
        px = max(4, int(np.rint(REF_PX * self.scale * (1.0 + rel) * big / f.height)))
        font = self._font(style, px)
        left, top, right, bottom = font.getbbox(cls)
        x = big / 2 + dx * big - (left + right) / 2
        y = big / 2 + dy * big - (top + bottom) / 2
        if right - left <= big:  # keep the ink inside the frame where it fits
            x = min(max(x, -left), big - right)
        if bottom - top <= big:
            y = min(max(y, -top), big - bottom)
        im = Image.new("L", (big, big))
        ImageDraw.Draw(im).text((int(np.rint(x)), int(np.rint(y))), cls, font=font, fill=255)
        a = np.asarray(im.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0
        return np.repeat(a[:, :, None], 3, axis=2)
