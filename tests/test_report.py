"""Gates, exit codes, renderers (JSON / JUnit / CSV / Markdown), the PNG writer and atomic writes."""
from __future__ import annotations

import csv
import io
import json
import os
import struct
import xml.etree.ElementTree as ET
import zlib

import pytest

from lolscan.scan import plot
from lolscan.errors import UsageError
from lolscan.scan.gates import apply_gates, check_gates, exit_code, parse_gate
from lolscan.scan.plot import scatter_png
from lolscan.scan.report import render
from lolscan.targets import Target, layout
from lolscan.utils.files import atomic_write

TARGETS = [
    Target("score", "regression", units="CLIP"),
    Target("nsfw", "binary", labels=["0", "1"]),
    Target("style", "multiclass", labels=["anime", "photo"], width=2),
]
layout(TARGETS)
MODEL = {"name": "toy", "architecture": "glnet"}


def _row(source: str, score: float, p_nsfw: float = 0.2, status: str = "ok") -> dict:
    if status != "ok":
        return {"source": source, "status": status, "error": "broken", "predictions": {}, "truth": {}, "gates": []}
    return {
        "source": source,
        "status": "ok",
        "error": None,
        "predictions": {
            "score": {"value": score},
            "nsfw": {"value": "1" if p_nsfw >= 0.5 else "0", "probability": p_nsfw},
            "style": {"value": "photo", "probability": 0.7, "probabilities": {"anime": 0.3, "photo": 0.7}},
        },
        "truth": {},
        "gates": [],
    }


# ---- gate parsing -----------------------------------------------------------------------------
def test_parse_gate_forms():
    g = parse_gate("score=0.25", "under")
    assert (g.target, g.label, g.op, g.bound) == ("score", None, "under", 0.25)
    g = parse_gate("style:photo=0.5", "over")
    assert (g.target, g.label, g.bound) == ("style", "photo", 0.5)
    assert parse_gate("score=-1e-3", "under").bound == -0.001


@pytest.mark.parametrize("text", ["score", "=1", "score=", "score=abc", "score=nan", "score=inf"])
def test_bad_gate_syntax_is_a_usage_error(text):
    with pytest.raises(UsageError):
        parse_gate(text, "under")


@pytest.mark.parametrize(
    "text, match",
    [("nope=1", "no target 'nope'"), ("style=0.5", "gate a class probability"), ("style:oil=0.5", "no class 'oil'"), ("score:x=1", "no classes")],
)
def test_gate_must_name_a_target_of_the_model(text, match):
    with pytest.raises(UsageError, match=match):
        check_gates([parse_gate(text, "under")], TARGETS)


def test_gate_boundary_equal_passes_both_ways():
    row = _row("a", 0.5)
    gates = [parse_gate("score=0.5", "under"), parse_gate("score=0.5", "over")]
    apply_gates(row, gates, TARGETS)
    assert [g["passed"] for g in row["gates"]] == [True, True]
    eps = 1e-12
    apply_gates(row, [parse_gate(f"score={0.5 + eps!r}", "under"), parse_gate(f"score={0.5 - eps!r}", "over")], TARGETS)
    assert [g["passed"] for g in row["gates"]] == [False, False]


def test_binary_and_class_probability_gates():
    row = _row("a", 1.0, p_nsfw=0.75)
    apply_gates(row, [parse_gate("nsfw=0.5", "over"), parse_gate("nsfw:0=0.25", "under"), parse_gate("style:anime=0.3", "over")], TARGETS)
    values = [g["value"] for g in row["gates"]]
    assert values == [0.75, 0.25, 0.3]  # P(class "0") = 1 - p, exact here
    assert [g["passed"] for g in row["gates"]] == [False, True, True]


def test_exit_code_precedence():
    ok, gate_fail = _row("a", 1.0), _row("b", 0.0)
    apply_gates(ok, [parse_gate("score=0.5", "under")], TARGETS)
    apply_gates(gate_fail, [parse_gate("score=0.5", "under")], TARGETS)
    assert exit_code([ok]) == 0
    assert exit_code([ok, gate_fail]) == 1
    assert exit_code([gate_fail, _row("c", 0, status="error")]) == 3
    assert exit_code([_row("c", 0, status="error"), _row("d", 0, status="incompatible")]) == 4


# ---- renderers --------------------------------------------------------------------------------
def _rows_with_gates():
    rows = [_row("a.safetensors", 1.0), _row("b.safetensors", 0.1), _row("c.safetensors", 0, status="error")]
    gates = [parse_gate("score=0.5", "under"), parse_gate("nsfw=0.9", "over")]
    for r in rows:
        apply_gates(r, gates, TARGETS)
    return rows, gates


def test_json_report_has_schema_version_and_summary():
    rows, gates = _rows_with_gates()
    rep = json.loads(render("json", rows, MODEL, gates, TARGETS))
    assert rep["schema_version"] == 1
    assert rep["summary"] == {"adapters": 3, "ok": 2, "errors": 1, "incompatible": 0, "nonfinite": 0, "gate_failures": 1, "exit_code": 3}
    assert [r["source"] for r in rep["results"]] == ["a.safetensors", "b.safetensors", "c.safetensors"]


def test_jsonl_is_one_object_per_line_and_strict_json():
    rows, gates = _rows_with_gates()
    rows[0]["predictions"]["score"]["value"] = float("nan")
    lines = render("jsonl", rows, MODEL, gates, TARGETS).splitlines()
    assert len(lines) == 3
    parsed = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) for line in lines]
    assert parsed[0]["predictions"]["score"]["value"] is None and parsed[0]["schema_version"] == 1


def test_junit_one_testcase_per_adapter_and_gate():
    rows, gates = _rows_with_gates()
    root = ET.fromstring(render("junit", rows, MODEL, gates, TARGETS))
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 3 * 2
    assert suite.get("tests") == "6" and suite.get("failures") == "1" and suite.get("errors") == "2"
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["b.safetensors :: --fail-under score=0.5"]
    # without gates: one case per adapter
    root = ET.fromstring(render("junit", rows, MODEL, [], TARGETS))
    assert len(list(root.iter("testcase"))) == 3


def test_csv_and_markdown():
    rows, gates = _rows_with_gates()
    table = list(csv.reader(io.StringIO(render("csv", rows, MODEL, gates, TARGETS))))
    header = table[0]
    assert header[:4] == ["adapter", "status", "error", "score"]
    assert "nsfw.probability" in header and "style.p[photo]" in header
    assert len(table) == 4 and float(table[1][3]) == 1.0
    assert table[2][header.index("--fail-under score=0.5")] == "fail"
    md = render("markdown", rows, MODEL, gates, TARGETS).splitlines()
    assert md[0].startswith("| adapter | status |") and len(md) == 2 + 3
    assert all(line.count("|") == md[0].count("|") for line in md)


# ---- PNG --------------------------------------------------------------------------------------
def _decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        if tag == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert (depth, ctype) == (8, 2)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = 1 + 3 * w
    assert len(raw) == h * stride
    rows = [raw[y * stride + 1 : (y + 1) * stride] for y in range(h)]
    assert all(raw[y * stride] == 0 for y in range(h))
    return w, h, rows


def _ink(rows: list[bytes], x: int, y: int, w: int, h: int) -> list[str]:
    """The black pixels of a w×h box as strings of '#' and '.'."""
    return ["".join("#" if rows[yy][3 * xx : 3 * xx + 3] == b"\0\0\0" else "." for xx in range(x, x + w)) for yy in range(y, y + h)]


def _drawn(text: str, scale: int = 1, up: bool = False) -> list[str]:
    """``text`` drawn alone on a canvas of exactly its size, as '#'/'.' rows."""
    length, height = max(plot.text_width(text, scale), 1), 7 * scale
    canvas = plot._Canvas(height, length) if up else plot._Canvas(length, height)
    canvas.text(0, length - 1 if up else 0, text, scale=scale, up=up)
    return _ink(_decode_png(canvas.png())[2], 0, 0, canvas.w, canvas.h)


def test_glyphs_render_as_their_bitmaps():
    assert all(len(g) == 7 and max(g) < 32 for g in plot._FONT.values())
    assert _drawn("R²") == [
        "####...##..",
        "#...#.#..#.",
        "#...#...#..",
        "####...#...",
        "#.#...####.",
        "#..#.......",
        "#...#......",
    ]
    one = ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."]
    assert _drawn("1") == one
    assert _drawn("1", scale=2) == [r.replace("#", "##").replace(".", "..") for r in one for _ in (0, 1)]
    # rotated to read upwards (a y-axis label): the top of the "L" faces left, its foot points up
    assert _drawn("L", up=True) == ["......#", "......#", "......#", "......#", "#######"]
    assert _drawn("~") == _drawn("?")  # characters without a glyph


def test_scatter_png_is_a_valid_image_with_the_points():
    size = 100
    data = scatter_png([([0.0, 1.0], [0.0, 1.0]), ([0.0, 1.0, 0.5], [1.0, 0.0, 0.5])], size=size)
    w, h, rows = _decode_png(data)
    cell = plot._LEFT + size + plot._GAP
    assert (w, h) == (2 * cell, plot._TOP + size + plot._BOTTOM)
    blue = (31, 119, 180)

    def has_blue(x_lo: int, x_hi: int, y_lo: int, y_hi: int) -> bool:
        return any(tuple(rows[y][3 * x : 3 * x + 3]) == blue for y in range(y_lo, y_hi) for x in range(x_lo, x_hi))

    # the range is padded 5% each side, so 0 and 1 sit 4-5 px inside the 100 px plot area
    for k, points in enumerate([[(0, 0), (1, 1)], [(0, 1), (1, 0), (0.5, 0.5)]]):
        x0, y0 = k * cell + plot._LEFT, plot._TOP
        for a, b in [(0, 0), (0, 1), (1, 0), (1, 1), (0.5, 0.5)]:
            x, y = x0 + 4 + round(a * 90), y0 + 95 - round(b * 90)
            assert has_blue(x - 3, x + 4, y - 3, y + 4) == ((a, b) in points), (k, a, b)


def test_scatter_png_titles_axis_labels_and_tick_values():
    size = 200  # wide enough for the title at twice the font size
    titles = ["val_loss  test R² 0.912", ""]
    w, h, rows = _decode_png(scatter_png([([0.0, 1.0], [0.0, 1.0]), ([0.0, 1.0], [1.0, 0.0])], size=size, titles=titles))
    cell, top = plot._LEFT + size + plot._GAP, plot._TOP
    # the title, drawn at twice the font size, in the band above the first panel only
    title = _drawn(titles[0], scale=2)
    y_title = (top - 14) // 2
    assert _ink(rows, 4, y_title, len(title[0]), 14) == title
    assert sum(r.count("#") for r in _ink(rows, 0, 0, w, top)) == sum(r.count("#") for r in title)
    # tick values 0.0, 0.2, ..., 1.0 under the x axis and left of the y axis, centred on their ticks
    inner, x0 = size - 1, plot._LEFT
    bottom = top + inner

    def px(v: float) -> int:
        return round((v + 0.05) / 1.1 * inner)

    for v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        label = _drawn(f"{v:.1f}")
        lw = len(label[0])
        assert _ink(rows, x0 + px(v) - lw // 2, bottom + 7, lw, 7) == label, v
        assert _ink(rows, x0 - 7 - lw, bottom - px(v) - 3, lw, 7) == label, v
        assert _ink(rows, x0 + px(v), bottom + 1, 1, 4) == ["#"] * 4  # tick mark
    # axis labels: "true" centred under the plot, "predicted" upright along its left edge
    true = _drawn("true")
    assert _ink(rows, x0 + (inner - len(true[0])) // 2, bottom + 20, len(true[0]), 7) == true
    pred = _drawn("predicted", up=True)
    assert _ink(rows, 4, top + (inner + len(pred)) // 2 - len(pred) + 1, 7, len(pred)) == pred
    # the second panel has the same axes
    assert _ink(rows, cell + x0 + (inner - len(true[0])) // 2, bottom + 20, len(true[0]), 7) == true


def test_long_titles_are_shortened_to_their_panel_and_helpers():
    size = 60
    cell = plot._LEFT + size + plot._GAP
    long = "a_very_long_target_name_indeed  test mean accuracy 0.812"
    w, h, rows = _decode_png(scatter_png([([0.0], [0.0]), ([1.0], [1.0])], size=size, titles=[long, long]))
    band = _ink(rows, 0, 0, w, plot._TOP)
    first = [r[:cell] for r in band]
    assert any("#" in r for r in first) and all(r[cell - 4 : cell + 4] == "." * 8 for r in band)  # one size, no overlap
    assert plot.nice_ticks(2.35, 3.2) == pytest.approx([2.4, 2.6, 2.8, 3.0, 3.2])
    assert plot.nice_ticks(-7, -2) == [-7.0, -6.0, -5.0, -4.0, -3.0, -2.0]
    assert [plot.tick_label(v, [0.0, 0.05]) for v in (0.0, 0.05, -0.1)] == ["0.00", "0.05", "-0.10"]
    assert plot.tick_label(2e7, [0.0, 1e7]) == "2e+07"
    assert plot.plot_title("val_loss", "regression", {"r2": 0.91234}) == "val_loss  test R² 0.912"
    assert plot.plot_title("nsfw", "binary", {"accuracy": 0.5}) == "nsfw  test accuracy 0.500"
    assert plot.plot_title("src", "multilabel", {"mean_accuracy": float("nan")}) == "src  test mean accuracy n/a"


# ---- atomic writes ----------------------------------------------------------------------------
def test_atomic_write_leaves_old_file_and_no_temp_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    atomic_write(target, "old\n")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(target, "new\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
