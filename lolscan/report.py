"""Prediction reports: CI gates, exit codes, and the table/json/jsonl/csv/markdown/junit renderers.

A result row is a JSON-able dict (the same dict is appended to ``--output x.jsonl``, so
``--resume`` reads rows back unchanged)::

    {"source": str, "status": "ok" | "error" | "incompatible", "error": str | None,
     "predictions": {target: {"value": ..., "probability": ..., "probabilities": {...}}},
     "truth": {target: value}, "gates": [{"gate", "target", "value", "bound", "passed"}]}
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_INCOMPATIBLE, EXIT_OK, UsageError
from .targets import Target

SCHEMA_VERSION = 1
FORMATS = ("table", "json", "jsonl", "csv", "markdown", "junit")
_SUFFIX_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".md": "markdown", ".xml": "junit"}


# ---- gates ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gate:
    """``--fail-under T=V`` fails when the value is below V; ``--fail-over`` when above. Equal passes."""

    target: str
    label: str | None
    op: str  # "under" | "over"
    bound: float
    text: str

    @property
    def key(self) -> str:
        return self.target if self.label is None else f"{self.target}:{self.label}"

    @property
    def describe(self) -> str:
        return f"{self.key} {'>=' if self.op == 'under' else '<='} {self.bound:g}"


def parse_gate(text: str, op: str) -> Gate:
    """``TARGET=VALUE`` or ``TARGET:LABEL=VALUE`` (a class probability). Raises UsageError."""
    flag = f"--fail-{op}"
    name, eq, value = text.rpartition("=")
    if not eq or not name.strip() or not value.strip():
        raise UsageError(f"{flag} {text!r}: expected TARGET=VALUE, e.g. {flag} score=0.5")
    try:
        bound = float(value)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: {value!r} is not a number") from None
    if not math.isfinite(bound):
        raise UsageError(f"{flag} {text!r}: the bound must be finite")
    target, colon, label = name.strip().partition(":")
    return Gate(target.strip(), label.strip() if colon else None, op, bound, f"{flag} {text}")


def check_gates(gates: Sequence[Gate], targets: Sequence[Target]) -> None:
    """Every gate must name a target of the checkpoint (and a class of it where one is needed)."""
    by_name = {t.name: t for t in targets}
    for g in gates:
        t = by_name.get(g.target)
        if t is None:
            raise UsageError(f"{g.text}: the model has no target {g.target!r} (targets: {', '.join(by_name)})")
        if g.label is None and t.kind in ("multiclass", "multilabel"):
            raise UsageError(f"{g.text}: {t.name!r} is {t.kind}; gate a class probability, e.g. {t.name}:{t.labels[0]}={g.bound:g}")
        if g.label is not None and (t.kind == "regression" or g.label not in t.labels):
            where = "a regression target has no classes" if t.kind == "regression" else f"labels: {', '.join(t.labels)}"
            raise UsageError(f"{g.text}: {t.name!r} has no class {g.label!r} ({where})")


def gate_value(gate: Gate, target: Target, prediction: dict[str, Any]) -> float:
    if target.kind == "regression":
        return float(prediction["value"])
    if target.kind == "binary":
        p = float(prediction["probability"])
        return 1.0 - p if gate.label is not None and gate.label == target.labels[0] else p
    return float(prediction["probabilities"][gate.label])


def apply_gates(row: dict[str, Any], gates: Sequence[Gate], targets: Sequence[Target]) -> None:
    """Fill ``row["gates"]`` (rows that failed to score get no gate results)."""
    by_name = {t.name: t for t in targets}
    row["gates"] = []
    if row.get("status") != "ok":
        return
    for g in gates:
        v = gate_value(g, by_name[g.target], row["predictions"][g.target])
        passed = v >= g.bound if g.op == "under" else v <= g.bound
        row["gates"].append({"gate": g.text, "target": g.key, "op": g.op, "bound": g.bound, "value": v, "passed": passed})


def exit_code(rows: Iterable[dict[str, Any]]) -> int:
    """4 if any adapter does not fit the model, else 3 if any was unreadable, else 1 if any gate failed."""
    statuses, failed = set(), False
    for r in rows:
        statuses.add(r.get("status"))
        failed = failed or any(not g["passed"] for g in r.get("gates") or ())
    if "incompatible" in statuses:
        return EXIT_INCOMPATIBLE
    if "error" in statuses:
        return EXIT_BAD_INPUT
    return EXIT_GATE_FAILED if failed else EXIT_OK


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    return {
        "adapters": len(rows),
        "ok": sum(r.get("status") == "ok" for r in rows),
        "errors": sum(r.get("status") == "error" for r in rows),
        "incompatible": sum(r.get("status") == "incompatible" for r in rows),
        "gate_failures": sum(not g["passed"] for r in rows for g in r.get("gates") or ()),
        "exit_code": exit_code(rows),
    }


# ---- renderers --------------------------------------------------------------------------------
def format_from_suffix(path: str | Path) -> str | None:
    return _SUFFIX_FORMATS.get(Path(path).suffix.lower())


def fmt_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) if v else "(none)"
    return str(v)


def fmt_prediction(pred: dict[str, Any] | None) -> str:
    if not pred:
        return ""
    text = fmt_value(pred.get("value"))
    if "probability" in pred and not isinstance(pred.get("value"), list):
        text += f" ({pred['probability']:.2f})"
    return text


def report_dict(rows: Sequence[dict[str, Any]], model: dict[str, Any], gates: Sequence[Gate]) -> dict[str, Any]:
    from . import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "lolscan_version": __version__,
        "model": model,
        "gates": [g.text for g in gates],
        "results": list(rows),
        "summary": summary(rows),
    }


def render(fmt: str, rows: Sequence[dict[str, Any]], model: dict[str, Any], gates: Sequence[Gate], targets: Sequence[Target]) -> str:
    """Every format but ``table`` (which needs a console); returns text ending in a newline."""
    if fmt == "json":
        return json.dumps(clean(report_dict(rows, model, gates)), indent=2, default=_json_default) + "\n"
    if fmt == "jsonl":
        return "".join(jsonl_line(r) for r in rows)
    if fmt == "csv":
        return render_csv(rows, targets)
    if fmt == "markdown":
        return render_markdown(rows, targets)
    if fmt == "junit":
        return render_junit(rows, model, gates)
    raise UsageError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")


def _json_default(o: Any) -> Any:
    return str(o)


def clean(o: Any) -> Any:
    """Non-finite floats -> None, so every output is strict JSON."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean(v) for v in o]
    return o


def jsonl_line(row: dict[str, Any]) -> str:
    return json.dumps(clean({"schema_version": SCHEMA_VERSION, **row}), default=_json_default) + "\n"


def _flat(rows: Sequence[dict[str, Any]], targets: Sequence[Target]) -> tuple[list[str], list[list[str]]]:
    has_truth = any(r.get("truth") for r in rows)
    gate_names = list(dict.fromkeys(g["gate"] for r in rows for g in r.get("gates") or ()))
    header = ["adapter", "status"]
    for t in targets:
        header.append(t.name + (f" [{t.units}]" if t.units else ""))
        if has_truth:
            header.append(f"{t.name} (true)")
    header += gate_names + ["error"]
    body = []
    for r in rows:
        line = [r["source"], r.get("status", "")]
        for t in targets:
            line.append(fmt_prediction((r.get("predictions") or {}).get(t.name)))
            if has_truth:
                line.append(fmt_value((r.get("truth") or {}).get(t.name)))
        by_gate = {g["gate"]: g for g in r.get("gates") or ()}
        for name in gate_names:
            g = by_gate.get(name)
            line.append("" if g is None else ("pass" if g["passed"] else f"FAIL ({g['value']:.4g})"))
        line.append(r.get("error") or "")
        body.append(line)
    return header, body


def render_csv(rows: Sequence[dict[str, Any]], targets: Sequence[Target]) -> str:
    """Machine CSV: raw numbers (not rounded), one column per target value/probability/truth/gate."""
    header = ["adapter", "status", "error"]
    label_cols: list[tuple[str, str | None]] = []
    for t in targets:
        header.append(t.name)
        label_cols.append((t.name, None))
        if t.kind == "binary":
            header.append(f"{t.name}.probability")
            label_cols.append((t.name, "probability"))
        elif t.kind in ("multiclass", "multilabel"):
            for lab in t.labels:
                header.append(f"{t.name}.p[{lab}]")
                label_cols.append((t.name, lab))
    has_truth = any(r.get("truth") for r in rows)
    if has_truth:
        header += [f"{t.name}.true" for t in targets]
    gate_names = list(dict.fromkeys(g["gate"] for r in rows for g in r.get("gates") or ()))
    header += gate_names
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        preds = r.get("predictions") or {}
        line: list[Any] = [r["source"], r.get("status", ""), r.get("error") or ""]
        for name, part in label_cols:
            p = preds.get(name)
            if p is None:
                line.append("")
            elif part is None:
                v = p.get("value")
                line.append("|".join(v) if isinstance(v, list) else v)
            elif part == "probability":
                line.append(p.get("probability"))
            else:
                line.append(p["probabilities"].get(part))
        if has_truth:
            for t in targets:
                v = (r.get("truth") or {}).get(t.name)
                line.append("|".join(v) if isinstance(v, list) else ("" if v is None else v))
        by_gate = {g["gate"]: g for g in r.get("gates") or ()}
        line += ["" if n not in by_gate else ("pass" if by_gate[n]["passed"] else "fail") for n in gate_names]
        w.writerow(line)
    return buf.getvalue()


def render_markdown(rows: Sequence[dict[str, Any]], targets: Sequence[Target]) -> str:
    header, body = _flat(rows, targets)

    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in line) + " |" for line in body]
    return "\n".join(lines) + "\n"


def render_junit(rows: Sequence[dict[str, Any]], model: dict[str, Any], gates: Sequence[Gate]) -> str:
    """One testcase per adapter × gate (one per adapter when there are no gates)."""
    suite = ET.Element("testsuite", name=f"lolscan ({model.get('name', 'model')})")
    tests = failures = errors = 0
    for r in rows:
        cases = [g.text for g in gates] or ["predict"]
        by_gate = {g["gate"]: g for g in r.get("gates") or ()}
        for name in cases:
            tests += 1
            case = ET.SubElement(suite, "testcase", classname=f"lolscan.{model.get('name', 'model')}", name=f"{r['source']} :: {name}")
            if r.get("status") != "ok":
                errors += 1
                ET.SubElement(case, "error", message=r.get("error") or r.get("status", "error"), type=r.get("status", "error"))
                continue
            g = by_gate.get(name)
            if g is not None and not g["passed"]:
                failures += 1
                rel = "<" if g["op"] == "under" else ">"
                ET.SubElement(case, "failure", message=f"{g['target']} = {g['value']:.6g} {rel} {g['bound']:g}", type="gate")
            preds = "; ".join(f"{k}={fmt_prediction(v)}" for k, v in (r.get("predictions") or {}).items())
            ET.SubElement(case, "system-out").text = preds
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def render_table(console: Any, rows: Sequence[dict[str, Any]], targets: Sequence[Target], title: str = "") -> None:
    from rich.table import Table

    header, body = _flat(rows, targets)
    table = Table(title=title or None, show_lines=False)
    for h in header:
        table.add_column(h, overflow="fold", style="red" if h == "error" else None)
    for line in body:
        styled = [f"[bold red]{c}[/]" if c.startswith("FAIL") else c for c in line]
        table.add_row(*styled)
    console.print(table)


# ---- files ------------------------------------------------------------------------------------
def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write to a temporary file next to `path` and rename it into place (never half-written)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- predicted-vs-true plot (PNG without matplotlib) ------------------------------------------
# A 3×5 pixel font for axis-range labels; rows top to bottom, 3 bits each.
_GLYPHS = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7), "4": (5, 5, 7, 1, 1),
    "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1), "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7),
    ".": (0, 0, 0, 0, 2), "-": (0, 0, 7, 0, 0), "+": (0, 2, 7, 2, 0), "e": (7, 5, 7, 4, 7), " ": (0, 0, 0, 0, 0),
}


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

    def text(self, x: int, y: int, s: str, rgb: tuple[int, int, int] = (0, 0, 0), scale: int = 2) -> None:
        for ch in s:
            for row, bits in enumerate(_GLYPHS.get(ch, _GLYPHS[" "])):
                for col in range(3):
                    if bits >> (2 - col) & 1:
                        for sy in range(scale):
                            for sx in range(scale):
                                self.dot(x + col * scale + sx, y + row * scale + sy, rgb)
            x += 4 * scale

    def png(self) -> bytes:
        import struct
        import zlib

        def chunk(tag: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

        stride = self.w * 3
        raw = b"".join(b"\x00" + bytes(self.px[y * stride : (y + 1) * stride]) for y in range(self.h))
        ihdr = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def scatter_png(panels: Sequence[tuple[Sequence[float], Sequence[float]]], size: int = 320) -> bytes:
    """One square panel per target: x = true, y = predicted, grey y = x diagonal, axis ranges
    printed at the corners. Classification targets pass (true class 0/1, probability)."""
    pad, gap = 40, 20
    n = max(len(panels), 1)
    canvas = _Canvas(n * (size + gap) + gap, size + 2 * pad)
    for k, (true, pred) in enumerate(panels):
        x0, y0 = gap + k * (size + gap), pad
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

        canvas.line(x0, y0, x0, y0 + inner, (0, 0, 0))
        canvas.line(x0, y0 + inner, x0 + inner, y0 + inner, (0, 0, 0))
        canvas.line(x0 + inner, y0, x0 + inner, y0 + inner, (200, 200, 200))
        canvas.line(x0, y0, x0 + inner, y0, (200, 200, 200))
        canvas.line(x0, y0 + inner, x0 + inner, y0, (170, 170, 170))
        for a, b in pts:
            canvas.disc(x0 + px(a), y0 + inner - px(b), 2, (31, 119, 180))
        canvas.text(x0, y0 + inner + 6, f"{lo:.3g}")
        hi_s = f"{hi:.3g}"
        canvas.text(x0 + inner - 8 * len(hi_s), y0 + inner + 6, hi_s)
        canvas.text(x0, y0 - 14, hi_s)
    return canvas.png()
