"""Image–caption sources for diffusion zoos: where a LoRA's finetuning images come from.

A source knows its classes and styles and draws images of given classes in one style, deterministically
from a numpy generator. The recipe names one (``[data] source = "shapes"``) and passes it options
(``[data.source_options]``); `register_source` adds another. Built in: ``shapes`` (synthetic, made in
code), ``fashion_mnist`` (the Debian package's files), ``fonts`` (glyphs of installed font files, one
identity per font: `lolscan.zoo.fonts`) and ``mix`` (several of them as one: `lolscan.zoo.mix`). Images are float32 numpy arrays ``[H, W, 3]`` in [0, 1]. A source
may have a ``check()`` the build calls before anything else (files present?), and an
``attributes(style) -> dict`` the zoo writes as ``attr_<name>`` label columns of each LoRA of that style,
and a ``pair(rng) -> (cls, style)`` that draws one valid class/style pair, which the in-house base and
scorer trainers use instead of a class and a style drawn independently (the ``mix`` source of
`lolscan.zoo.mix`, whose classes each go only with their own source's styles, has one).
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ..errors import InputError, UsageError
from .fonts import Fonts
from .mix import mix_source


class ImageSource(Protocol):
    name: str
    version: str  # part of the zoo's data digest: bump it when the images a seed gives change
    classes: list[str]
    styles: list[str]

    def image(self, cls: str, style: str, size: int, rng: np.random.Generator) -> np.ndarray:
        """One [size, size, 3] float32 image in [0, 1] of class `cls` in style `style`."""
        ...


# RGB of each style of the synthetic source
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1), "green": (0.1, 0.7, 0.2), "blue": (0.15, 0.25, 0.9), "yellow": (0.95, 0.85, 0.1),
}
SHAPES = ("circle", "square", "triangle", "cross")


@dataclass
class Shapes:
    """Synthetic coloured shapes on a light noisy background: class = shape, style = colour.

    Made in code (no files), so a test or a first try needs no data; the position, size and background
    vary per image."""

    name: str = "shapes"
    version: str = "1"

    def __post_init__(self) -> None:
        self.classes = list(SHAPES)
        self.styles = list(COLOURS)

    def image(self, cls: str, style: str, size: int, rng: np.random.Generator) -> np.ndarray:
        if cls not in SHAPES or style not in COLOURS:
            raise UsageError(f"shapes source: unknown class {cls!r} or style {style!r}")
        bg = 0.9 + 0.05 * rng.standard_normal((size, size, 1)).astype(np.float32)
        img = np.repeat(bg, 3, axis=2)
        r = rng.uniform(0.22, 0.38) * size
        cx, cy = rng.uniform(r, size - r, 2)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        dx, dy = xx - cx, yy - cy
        if cls == "circle":
            mask = dx * dx + dy * dy <= r * r
        elif cls == "square":
            mask = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
        elif cls == "triangle":
            mask = (dy <= r * 0.8) & (dy >= -r + 2 * np.abs(dx) * 0.9)
        else:  # cross
            w = r * 0.3
            mask = ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
        img[mask] = np.array(COLOURS[style], dtype=np.float32)
        return np.clip(img, 0.0, 1.0).astype(np.float32)


# ---- Fashion-MNIST ---------------------------------------------------------------------------------
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist puts it
FASHION_MNIST_ENV = "LOLSCAN_FASHION_MNIST"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")  # label 0…9, as the dataset's README names them
TINTS: dict[str, tuple[float, float, float]] = {"grey": (1.0, 1.0, 1.0), **COLOURS}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (``.gz`` or plain) of unsigned bytes: magic 0 0 8 ndim, ndim big-endian uint32 sizes, data."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise InputError(f"{path}: not an IDX file of unsigned bytes")
    nd = data[3]
    if len(data) < 4 + 4 * nd:
        raise InputError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{nd}I", data[4:4 + 4 * nd])
    n = int(np.prod(dims))
    if len(data) - 4 - 4 * nd != n:
        raise InputError(f"{path}: IDX header says {dims} ({n} bytes), the file holds {len(data) - 4 - 4 * nd}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


def fit_square(x: np.ndarray, size: int) -> np.ndarray:
    """A [h, h] image to [size, size]: upsampled by the largest whole factor that fits (nearest) and padded
    with zeros evenly (28 → 32: 2 px each side; 28 → 64: ×2, then 4 px), or, below h, sampled nearest."""
    h = x.shape[0]
    if size < h:
        idx = ((np.arange(size) + 0.5) * h / size).astype(int)
        return x[np.ix_(idx, idx)]
    f = size // h
    up = x.repeat(f, 0).repeat(f, 1)
    out = np.zeros((size, size), dtype=x.dtype)
    top = (size - h * f) // 2
    out[top:top + h * f, top:top + h * f] = up
    return out


@dataclass
class FashionMNIST:
    """Fashion-MNIST (Zalando, MIT licence): 28×28 grey garments on black, 10 classes; style = tint.

    Reads the IDX files of Debian's ``dataset-fashion-mnist`` package (``apt install dataset-fashion-mnist``:
    /usr/share/datasets/fashion-mnist), or of ``data_root`` (``[data.source_options]``), or of
    $LOLSCAN_FASHION_MNIST. ``split``: ``train`` (60,000 images) or ``test`` (10,000). An image is one of its
    class's images drawn by the generator, fitted to the size by `fit_square`, times the tint's RGB."""

    data_root: str | None = None
    split: str = "train"
    name: str = "fashion_mnist"
    version: str = "1"
    _data: tuple[np.ndarray, list[np.ndarray]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.split not in ("train", "test"):
            raise UsageError(f"fashion_mnist source: split must be 'train' or 'test', not {self.split!r}")
        self.classes = list(FASHION_MNIST_CLASSES)
        self.styles = list(TINTS)

    @property
    def root(self) -> Path:
        return Path(self.data_root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR).expanduser()

    def _file(self, kind: str) -> Path:
        stem = f"{'train' if self.split == 'train' else 't10k'}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        for name in (stem + ".gz", stem):
            if (self.root / name).is_file():
                return self.root / name
        raise InputError(f"Fashion-MNIST: no {stem}[.gz] in {self.root}; install it with "
                         f"`apt install dataset-fashion-mnist` (or set data_root in [data.source_options], "
                         f"or ${FASHION_MNIST_ENV}, to a folder holding the IDX files)")

    def check(self) -> None:
        """Exit 3 (`InputError`) naming the package to install when the files are missing."""
        self._file("images"), self._file("labels")

    def load(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """The images [N, 28, 28] uint8 and, per class, the indices of its images."""
        if self._data is None:
            images, labels = read_idx(self._file("images")), read_idx(self._file("labels"))
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or images.shape[1] != images.shape[2]:
                raise InputError(f"Fashion-MNIST in {self.root}: images {images.shape} and labels {labels.shape} do not match")
            per_class = [np.flatnonzero(labels == k) for k in range(len(self.classes))]
            if any(len(ix) == 0 for ix in per_class):
                raise InputError(f"Fashion-MNIST in {self.root}: a class has no images (labels {sorted(set(labels.tolist()))})")
            self._data = (images, per_class)
        return self._data

    def image(self, cls: str, style: str, size: int, rng: np.random.Generator) -> np.ndarray:
        if cls not in self.classes or style not in TINTS:
            raise UsageError(f"fashion_mnist source: unknown class {cls!r} or style {style!r}")
        images, per_class = self.load()
        ix = per_class[self.classes.index(cls)]
        x = images[ix[int(rng.integers(len(ix)))]].astype(np.float32) / 255.0
        x = fit_square(x, size)
        return (x[:, :, None] * np.asarray(TINTS[style], dtype=np.float32)).astype(np.float32)


SOURCES: dict[str, Callable[..., ImageSource]] = {"shapes": Shapes, "fashion_mnist": FashionMNIST, "fonts": Fonts, "mix": mix_source}


def register_source(name: str, factory: Callable[..., ImageSource]) -> None:
    """Make `name` usable as ``[data] source``; `factory(**source_options)` builds it."""
    SOURCES[name] = factory


def get_source(name: str, options: dict[str, Any] | None = None) -> ImageSource:
    if name not in SOURCES:
        raise UsageError(f"recipe: unknown image source {name!r} (known: {', '.join(sorted(SOURCES))})")
    try:
        return SOURCES[name](**(options or {}))
    except TypeError as exc:
        if "data_root" in (options or {}) and "data_root" in str(exc):
            raise UsageError(f"image source {name!r} reads no files: --data-root / data_root is not for it") from None
        raise UsageError(f"recipe: image source {name!r}: {exc}") from None


def draw_pair(source: ImageSource, rng: np.random.Generator) -> tuple[str, str]:
    """One (class, style) to draw for training a base or a scorer: the source's ``pair(rng)`` where it has
    one (a mix, whose classes go only with their own part's styles), else a uniform class, then a uniform
    style (two ``rng.integers`` calls, in that order)."""
    pair = getattr(source, "pair", None)
    if pair is not None:
        return pair(rng)
    cls = source.classes[int(rng.integers(len(source.classes)))]
    return cls, source.styles[int(rng.integers(len(source.styles)))]


def caption_templates(source: ImageSource, cls: str, templates: list[str] | None, default: list[str]) -> list[str]:
    """The caption templates of an image of class `cls`: `templates` where given, else the class's own (a
    mix's ``templates_for(cls)``: its part's templates, so fonts' letters are "the letter A" and garments
    "a photo of a Dress"), else the source's ``templates``, else `default`."""
    if templates:
        return templates
    per_class = getattr(source, "templates_for", None)
    if per_class is not None:
        return per_class(cls) or default
    return getattr(source, "templates", None) or default


def open_source(name: str, options: dict[str, Any] | None = None) -> ImageSource:
    """`get_source`, then the source's own data check where it has one (files it reads: a clear exit 3
    before anything slow starts)."""
    source = get_source(name, options)
    if hasattr(source, "check"):
        source.check()
    return source
