"""The ``mix`` image source: several sources as one, so one base (or one in-house scorer) learns them all.

Options (``[data.source_options]`` or ``--source-options``)::

    {"sources": ["fashion_mnist", "fonts"],                  # the parts, by registered name, in order
     "options": {"fonts": {"font_dir": "/data/fonts"}},      # each part's own options (optional)
     "weights": {"fashion_mnist": 1, "fonts": 3}}            # how often a part is drawn (optional; a list
                                                             # in the order of "sources" works too; default equal)

Classes are the parts' classes in order; a class name two parts share (case-insensitively: the text
encoders lower-case captions) is refused, so a class says which part draws it. Styles are the union of
the parts' styles in order (a style two parts share is listed once). A class goes only with a style of its
own part: `image` refuses a foreign pair, and `pair(rng)` — the optional source method the base and scorer
trainers use when a source has it — draws a valid one: a part by weight, then a class and a style of it.
Captions too are each part's: ``templates_for(cls)`` is the class's part's ``templates`` (None where it
has none: the trainer's default), which the base and scorer trainers use when no templates are passed.
``check()`` runs each part's check (exit 3 naming what to install); ``version`` names each part's version
and the weights. The held-out images of a mix are each part's held-out images (`held_out_parts`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UsageError


class Mix:
    """Parts (built sources) drawn by weight; see the module docstring. `mix_source` builds one from names."""

    name = "mix"

    def __init__(self, parts: list[Any], weights: list[float] | None = None) -> None:
        if len(parts) < 1:
            raise UsageError("mix source: give at least one part in sources")
        names = [p.name for p in parts]
        if len(set(names)) != len(names):
            raise UsageError(f"mix source: a part is named twice in {names}")
        w = [1.0] * len(parts) if weights is None else [float(x) for x in weights]
        if len(w) != len(parts) or not all(np.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
            raise UsageError(f"mix source: weights {weights} must be one non-negative number per part, not all 0")
        self.parts, self.weights = list(parts), w
        self.p = np.asarray(w, dtype=float) / sum(w)
        self.owner: dict[str, int] = {}
        folded: dict[str, str] = {}
        for i, part in enumerate(parts):
            for c in part.classes:
                other = folded.get(c.casefold())
                if other is not None:
                    raise UsageError(f"mix source: class {c!r} of {part.name} and class {other!r} of "
                                     f"{parts[self.owner[other]].name} share a name (captions lower-case it), so a "
                                     "caption could not say which source it means; leave one out (e.g. a part's "
                                     "classes or glyphs option)")
                folded[c.casefold()] = c
                self.owner[c] = i
        self.classes = [c for part in parts for c in part.classes]
        self._styles: list[str] | None = None

    @property
    def styles(self) -> list[str]:
        if self._styles is None:  # a font source lists its fonts on first use: not before `check`
            seen: dict[str, None] = {}
            for part in self.parts:
                seen.update(dict.fromkeys(part.styles))
            self._styles = list(seen)
        return self._styles

    @property
    def version(self) -> str:
        parts = "+".join(f"{p.name}={p.version}" for p in self.parts)
        return f"1({parts};w={','.join(f'{x:g}' for x in self.weights)})"

    def check(self) -> None:
        for part in self.parts:
            if hasattr(part, "check"):
                part.check()

    def part_of(self, cls: str) -> Any:
        """The part that owns class `cls`."""
        if cls not in self.owner:
            raise UsageError(f"mix source: unknown class {cls!r}")
        return self.parts[self.owner[cls]]

    def styles_for(self, cls: str) -> list[str]:
        """The styles class `cls` goes with: its part's."""
        return list(self.part_of(cls).styles)

    def templates_for(self, cls: str) -> list[str] | None:
        """The caption templates of class `cls`: its part's own ``templates``, or None (the trainer's default)."""
        return getattr(self.part_of(cls), "templates", None)

    def pair(self, rng: np.random.Generator) -> tuple[str, str]:
        """One valid (class, style): a part drawn by weight, then its own pair (where it has `pair`) or a
        class and a style of it, each uniform."""
        part = self.parts[int(rng.choice(len(self.parts), p=self.p))] if len(self.parts) > 1 else self.parts[0]
        if hasattr(part, "pair"):
            return part.pair(rng)
        return part.classes[int(rng.integers(len(part.classes)))], part.styles[int(rng.integers(len(part.styles)))]

    def image(self, cls: str, style: str, size: int, rng: np.random.Generator) -> np.ndarray:
        part = self.part_of(cls)
        if style not in part.styles:
            raise UsageError(f"mix source: class {cls!r} is {part.name}'s and style {style!r} is not one of its "
                             "styles (a mix draws a class only in a style of its own source)")
        return part.image(cls, style, size, rng)

    def with_parts(self, parts: list[Any]) -> Mix:
        """The same mix (weights) over other parts of the same names (e.g. their held-out versions)."""
        return Mix(parts, self.weights)


def mix_source(sources: list[str] | None = None, options: dict[str, dict[str, Any]] | None = None,
               weights: list[float] | dict[str, float] | None = None, **unknown: Any) -> Mix:
    """`SOURCES["mix"]`: the parts opened by name with their options (`get_source`; `open_source` then runs
    the mix's `check`, which checks each part)."""
    from .images import get_source

    if unknown:
        hint = " (give a part's data_root in options: {\"options\": {\"fashion_mnist\": {\"data_root\": …}}})" \
            if "data_root" in unknown else ""
        raise UsageError(f"mix source: unknown options {sorted(unknown)}; known: sources, options, weights{hint}")
    if not sources or not isinstance(sources, (list, tuple)) or not all(isinstance(s, str) for s in sources):
        raise UsageError("mix source: sources must be a list of source names, e.g. [\"fashion_mnist\", \"fonts\"]")
    options = options or {}
    stray = set(options) - set(sources)
    if stray:
        raise UsageError(f"mix source: options for {sorted(stray)}, which are not in sources {list(sources)}")
    if isinstance(weights, dict):
        stray = set(weights) - set(sources)
        if stray:
            raise UsageError(f"mix source: weights for {sorted(stray)}, which are not in sources {list(sources)}")
        weights = [weights.get(s, 1.0) for s in sources]
    return Mix([get_source(s, options.get(s)) for s in sources], weights)
