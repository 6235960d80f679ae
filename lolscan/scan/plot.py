"""The predicted-vs-true scatter plot of a checkpoint's test split, written as PNG without matplotlib:
a 5×7 pixel font, a small RGB canvas with its own PNG encoder, round tick values and panel titles.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


# A 5×7 pixel font (after the HD44780 character ROM): 7 rows top to bottom, 5 bits each, the high
# bit leftmost, as 14 hex digits. Characters it lacks are drawn as "?".
_FONT_HEX = {
    "0": "0e11131519110e", "1": "040c040404040e", "2": "0e11010204081f", "3": "1f02040201110e",
    "4": "02060a121f0202", "5": "1f101e0101110e", "6": "0608101e11110e", "7": "1f010204080808",
    "8": "0e11110e11110e", "9": "0e11110f01020c",
    "A": "0e1111111f1111", "B": "1e11111e11111e", "C": "0e11101010110e", "D": "1c12111111121c",
    "E": "1f10101e10101f", "F": "1f10101e101010", "G": "0e11101711110f", "H": "1111111f111111",
    "I": "0e04040404040e", "J": "0702020202120c", "K": "11121418141211", "L": "1010101010101f",
    "M": "111b1515111111", "N": "11111915131111", "O": "0e11111111110e", "P": "1e11111e101010",
    "Q": "0e11111115120d", "R": "1e11111e141211", "S": "0f10100e01011e", "T": "1f040404040404",
    "U": "1111111111110e", "V": "11111111110a04", "W": "1111111515150a", "X": "11110a040a1111",
    "Y": "1111110a040404", "Z": "1f01020408101f",
    "a": "00000e010f110f", "b": "1010161911111e", "c": "00000e1010110e", "d": "01010d1311110f",
    "e": "00000e111f100e", "f": "0609081c080808", "g": "000f11110f010e", "h": "10101619111111",
    "i": "04000c0404040e", "j": "0200060202120c", "k": "10101214181412", "l": "0c04040404040e",
    "m": "00001a15151111", "n": "00001619111111", "o": "00000e1111110e", "p": "00001e111e1010",
    "q": "00000d130f0101", "r": "00001619101010", "s": "00000e100e011e", "t": "08081c08080906",
    "u": "0000111111130d", "v": "00001111110a04", "w": "0000111115150a", "x": "0000110a040a11",
    "y": "000011110f010e", "z": "00001f0204081f",
    " ": "00000000000000", ".": "00000000000c0c", ",": "000000000c0408", "-": "0000001f000000",
    "+": "0004041f040400", "_": "0000000000001f", ":": "000c0c000c0c00", "=": "00001f001f0000",
    "(": "02040808080402", ")": "08040202020408", "/": "00010204081000", "%": "18190204081303",
    "?": "0e110102040004", "'": "04040800000000", "²": "0c1204081e0000", "τ": "00001f04040502",
    "[": "0e08080808080e", "]": "0e02020202020e", "<": "02040810080402", ">": "08040201020408",
    "!": "04040404040004", "#": "0a0a1f0a1f0a0a", "&": "0c12140815120d", "*": "00040e1f0e0400",
}
_FONT = {ch: bytes.fromhex(h.replace(" ", "")) for ch, h in _FONT_HEX.items()}
_GLYPH_W, _GLYPH_H = 5, 7  # a character cell is one pixel wider and taller (spacing)


def _glyph(ch: str) -> bytes:
    return _FONT.get(ch) or _FONT["?"]


def text_width(s: str, scale: int = 1) -> int:
    """Width in pixels of ``s`` drawn by `_Canvas.text` (no trailing spacing column)."""
    return max(len(s) * (_GLYPH_W + 1) - 1, 0) * scale


class _Canvas:
    def __init__(self, width: int, height: int):
        self.w, self.h = width, height
        self.px = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, rgb: tuple[int, int, int]) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i : i + 3] = bytes(rgb)

    def disc(self, x: int, y: int, radius: int, rgb: tuple[int, int, int]) -> None:
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                if dx * dx + dy * dy <= radius * radius:
                    self.dot(x + dx, y + dy, rgb)

    def line(self, x0: int, y0: int, x1: int, y1: int, rgb: tuple[int, int, int]) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for k in range(steps + 1):
            self.dot(round(x0 + (x1 - x0) * k / steps), round(y0 + (y1 - y0) * k / steps), rgb)

    def text(self, x: int, y: int, s: str, rgb: tuple[int, int, int] = (0, 0, 0), scale: int = 1, *, up: bool = False) -> None:
        """Draw ``s`` with its top-left corner at (x, y); ``up``: rotated to read bottom to top,
        starting at (x, y) = bottom-left with the letters' tops facing left (a y-axis label)."""
        for k, ch in enumerate(s):
            for row, bits in enumerate(_glyph(ch)):
                for col in range(_GLYPH_W):
                    if bits >> (_GLYPH_W - 1 - col) & 1:
                        along, across = (k * (_GLYPH_W + 1) + col) * scale, row * scale
                        for sy in range(scale):
                            for sx in range(scale):
                                if up:
                                    self.dot(x + across + sy, y - along - sx, rgb)
                                else:
                                    self.dot(x + along + sx, y + across + sy, rgb)

    def png(self) -> bytes:
        import struct
        import zlib

        def chunk(tag: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

        stride = self.w * 3
        raw = b"".join(b"\x00" + bytes(self.px[y * stride : (y + 1) * stride]) for y in range(self.h))
        ihdr = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """About ``target`` round values (1, 2 or 5 × 10^k apart) inside ``[lo, hi]``."""
    raw = (hi - lo) / max(target - 1, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10)), key=lambda st: abs(math.log(st / raw)))
    first = math.ceil(lo / step - 1e-9)
    ticks = [(first + i) * step for i in range(int(math.floor(hi / step + 1e-9)) - first + 1)]
    return [0.0 if abs(t) < step * 1e-9 else t for t in ticks]


def tick_label(v: float, ticks: Sequence[float]) -> str:
    """``v`` with as many decimals as the tick spacing needs; %g when that gets long."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    s = f"{v:.{decimals}f}"
    return s if len(s) <= 7 else f"{v:.2g}"


def plot_title(name: str, kind: str, metrics: dict[str, Any]) -> str:
    """``"<target>  test R² 0.912"``: the target's name and its headline test metric."""
    key = {"regression": "r2", "multilabel": "mean_accuracy"}.get(kind, "accuracy")
    value = metrics.get(key)
    shown = f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"
    label = {"r2": "R²", "mean_accuracy": "mean accuracy"}.get(key, key)
    return f"{name}  test {label} {shown}"


# Panel layout in pixels: title band above, y tick labels and the rotated "predicted" left of
# the axes, x tick labels and "true" below.
_TOP, _LEFT, _BOTTOM, _GAP = 32, 64, 36, 24
_TICK = 4
_INK, _GREY, _BLUE = (0, 0, 0), (170, 170, 170), (31, 119, 180)


def scatter_png(
    panels: Sequence[tuple[Sequence[float], Sequence[float]]], size: int = 320, titles: Sequence[str] | None = None
) -> bytes:
    """One square panel per target: x = true, y = predicted, grey y = x diagonal, round tick values
    on both axes, axis labels, and ``titles[k]`` (e.g. from `plot_title`) above panel k.
    Classification targets pass (true class 0/1, probability)."""
    n = max(len(panels), 1)
    cell = _LEFT + size + _GAP
    canvas = _Canvas(n * cell, _TOP + size + _BOTTOM)
    titles = [t or "" for t in titles or ()]
    scale = 2 if all(text_width(t, 2) <= cell - 8 for t in titles) else 1  # one size for all titles
    for k, (true, pred) in enumerate(panels):
        x0, y0 = k * cell + _LEFT, _TOP  # top-left corner of the plot area
        pts = [(float(a), float(b)) for a, b in zip(true, pred) if math.isfinite(float(a)) and math.isfinite(float(b))]
        vals = [v for p in pts for v in p] or [0.0, 1.0]
        lo, hi = min(vals), max(vals)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        margin = 0.05 * (hi - lo)
        lo, hi = lo - margin, hi + margin
        inner = size - 1

        def px(v: float) -> int:
            return round((v - lo) / (hi - lo) * inner)

        bottom = y0 + inner
        canvas.line(x0 + inner, y0, x0 + inner, bottom, (200, 200, 200))
        canvas.line(x0, y0, x0 + inner, y0, (200, 200, 200))
        canvas.line(x0, bottom, x0 + inner, y0, _GREY)
        canvas.line(x0, y0, x0, bottom, _INK)
        canvas.line(x0, bottom, x0 + inner, bottom, _INK)
        ticks = nice_ticks(lo, hi)
        for t in ticks:
            label, p = tick_label(t, ticks), px(t)
            canvas.line(x0 + p, bottom + 1, x0 + p, bottom + _TICK, _INK)  # x axis
            canvas.text(x0 + p - text_width(label) // 2, bottom + _TICK + 3, label)
            canvas.line(x0 - _TICK, bottom - p, x0 - 1, bottom - p, _INK)  # y axis
            canvas.text(x0 - _TICK - 3 - text_width(label), bottom - p - _GLYPH_H // 2, label)
        canvas.text(x0 + (inner - text_width("true")) // 2, bottom + _TICK + 3 + _GLYPH_H + 6, "true")
        canvas.text(x0 - _LEFT + 4, y0 + (inner + text_width("predicted")) // 2, "predicted", up=True)
        for a, b in pts:
            canvas.disc(x0 + px(a), bottom - px(b), 2, _BLUE)
        if k < len(titles):
            title = titles[k]
            while text_width(title, scale) > cell - 8:
                title = title[:-3] + ".."
            canvas.text(k * cell + 4, (_TOP - _GLYPH_H * scale) // 2, title, scale=scale)
    return canvas.png()
