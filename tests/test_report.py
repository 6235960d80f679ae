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

from lolscan.errors import UsageError
from lolscan.report import (
    apply_gates,
    atomic_write,
    check_gates,
    exit_code,
    parse_gate,
    render,
    scatter_png,
)
from lolscan.targets import Target, layout

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
    assert rep["summary"] == {"adapters": 3, "ok": 2, "errors": 1, "incompatible": 0, "gate_failures": 1, "exit_code": 3}
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


def test_scatter_png_is_a_valid_image_with_the_points():
    data = scatter_png([([0.0, 1.0], [0.0, 1.0]), ([0.0, 1.0, 0.5], [1.0, 0.0, 0.5])], size=100)
    w, h, rows = _decode_png(data)
    assert (w, h) == (2 * 120 + 20, 180)
    blue = (31, 119, 180)

    def has_blue(x_lo: int, x_hi: int, y_lo: int, y_hi: int) -> bool:
        return any(tuple(rows[y][3 * x : 3 * x + 3]) == blue for y in range(y_lo, y_hi) for x in range(x_lo, x_hi))

    # panel 1 (x from 20, y from 40, 100 px, range padded 5%): points (0, 0) and (1, 1) only
    assert has_blue(20, 30, 130, 140)  # (0, 0): bottom left
    assert has_blue(110, 120, 40, 50)  # (1, 1): top right
    assert not has_blue(110, 120, 130, 140) and not has_blue(20, 30, 40, 50)
    # panel 2 (x from 140): (0, 1) top left, (1, 0) bottom right, (0.5, 0.5) centre
    assert has_blue(140, 150, 40, 50) and has_blue(230, 240, 130, 140) and has_blue(185, 195, 85, 95)


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
