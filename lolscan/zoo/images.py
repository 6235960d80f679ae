"""Image–caption sources for diffusion zoos: where a LoRA's finetuning images come from.

A source knows its classes and styles and draws images of given classes in one style, deterministically
from a numpy generator. The recipe names one (``[data] source = "shapes"``) and passes it options
(``[data.source_options]``); `register_source` adds another (Fashion-MNIST, emoji, clip art are the
planned real ones). Images are float32 numpy arrays ``[H, W, 3]`` in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from ..errors import UsageError


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


SOURCES: dict[str, Callable[..., ImageSource]] = {"shapes": Shapes}


def register_source(name: str, factory: Callable[..., ImageSource]) -> None:
    """Make `name` usable as ``[data] source``; `factory(**source_options)` builds it."""
    SOURCES[name] = factory


def get_source(name: str, options: dict[str, Any] | None = None) -> ImageSource:
    if name not in SOURCES:
        raise UsageError(f"recipe: unknown image source {name!r} (known: {', '.join(sorted(SOURCES))})")
    try:
        return SOURCES[name](**(options or {}))
    except TypeError as exc:
        raise UsageError(f"recipe: image source {name!r}: {exc}") from None
