"""Prediction reports: CI gates, exit codes, and the table/json/jsonl/csv/markdown/junit renderers.

A result row is a JSON-able dict (the same dict is appended to ``--output x.jsonl``, so
``--resume`` reads rows back unchanged)::

    {"source": str, "status": "ok" | "error" | "incompatible" | "nonfinite", "error": str | None,
     "predictions": {target: {"value": ..., "probability": ..., "probabilities": {...}}},
     "truth": {target: value}, "gates": [{"gate", "target", "value", "bound", "passed"}],
     "domain": {"score": float, "in_domain": bool},   # when the checkpoint has a domain reference
     "models": {target: checkpoint name}}             # when several checkpoints scored it (`CheckpointSet`)

With several checkpoints (``predict`` without --model, where several bundled ones fit) a row holds
the targets of all of them; where their domain answers differ, ``domain`` is the farthest score, in
domain only if every checkpoint says so, and ``domain["models"]`` holds each answer. The report's
``model`` then names them all ("a + b"), each of its targets carries ``model``, and ``models`` lists
each checkpoint's own description.

A regression prediction carries ``"interval": [lo, hi]`` and ``"interval_level"`` when the
checkpoint was calibrated (`lolscan.evaluation.calibration`); symmetric about the value, except for
a log-transformed target ([value·e^−q, value·e^q]).
"""
from __future__ import annotations

import csv
import io
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_INCOMPATIBLE, EXIT_OK, UsageError
from ..targets import Target
from ..utils.files import finite_json

SCHEMA_VERSION = 1
NO_MODEL = "no checkpoint"  # what JUnit and SARIF call the model of a run where no bundled checkpoint fits any adapter
FORMATS = ("table", "json", "jsonl", "csv", "markdown", "junit", "sarif")
_SUFFIX_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".md": "markdown", ".xml": "junit",
                   ".sarif": "sarif"}


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


def exit_code(rows: Iterable[dict[str, Any]], *, allow_nonfinite: bool = False) -> int:
    """4 if any adapter does not fit the model, else 3 if any was unreadable (or held NaN/Inf values,
    unless ``allow_nonfinite``), else 1 if any gate failed; whatever the order of the rows."""
    statuses, failed = set(), False
    for r in rows:
        statuses.add(r.get("status"))
        failed = failed or any(not g["passed"] for g in r.get("gates") or ())
    if "incompatible" in statuses:
        return EXIT_INCOMPATIBLE
    if "error" in statuses or ("nonfinite" in statuses and not allow_nonfinite):
        return EXIT_BAD_INPUT
    return EXIT_GATE_FAILED if failed else EXIT_OK


def summary(rows: Sequence[dict[str, Any]], *, allow_nonfinite: bool = False) -> dict[str, int]:
    return {
        "adapters": len(rows),
        "ok": sum(r.get("status") == "ok" for r in rows),
        "errors": sum(r.get("status") == "error" for r in rows),
        "incompatible": sum(r.get("status") == "incompatible" for r in rows),
        "nonfinite": sum(r.get("status") == "nonfinite" for r in rows),
        "gate_failures": sum(not g["passed"] for r in rows for g in r.get("gates") or ()),
        "exit_code": exit_code(rows, allow_nonfinite=allow_nonfinite),
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
    lo_hi = pred.get("interval")
    if isinstance(lo_hi, list) and len(lo_hi) == 2 and all(isinstance(x, (int, float)) for x in lo_hi):
        v, (lo, hi) = pred.get("value"), lo_hi
        if isinstance(v, (int, float)) and not math.isclose(hi - v, v - lo, rel_tol=1e-6, abs_tol=1e-12):
            text += f" [{fmt_value(lo)}, {fmt_value(hi)}]"  # asymmetric: a log-transformed target's
        else:
            text += f" ± {fmt_value((lo_hi[1] - lo_hi[0]) / 2)}"
    return text


def fmt_domain(dom: dict[str, Any] | None) -> str:
    """"yes 0.8" / "NO 3.1": whether the adapter is like the checkpoint's training adapters, and its score."""
    if not dom or not isinstance(dom.get("score"), (int, float)):
        return ""
    return f"{'yes' if dom.get('in_domain') else 'NO'} {dom['score']:.2g}"


def report_dict(rows: Sequence[dict[str, Any]], model: dict[str, Any], gates: Sequence[Gate], *, allow_nonfinite: bool = False) -> dict[str, Any]:
    from .. import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "lolscan_version": __version__,
        "model": model,
        "gates": [g.text for g in gates],
        "results": list(rows),
        "summary": summary(rows, allow_nonfinite=allow_nonfinite),
    }


def render(fmt: str, rows: Sequence[dict[str, Any]], model: dict[str, Any], gates: Sequence[Gate], targets: Sequence[Target], *,
           allow_nonfinite: bool = False) -> str:
    """Every format but ``table`` (which needs a console); returns text ending in a newline."""
    if fmt == "json":
        return json.dumps(clean(report_dict(rows, model, gates, allow_nonfinite=allow_nonfinite)), indent=2, default=_json_default) + "\n"
    if fmt == "jsonl":
        return "".join(jsonl_line(r) for r in rows)
    if fmt == "csv":
        return render_csv(rows, targets)
    if fmt == "markdown":
        return render_markdown(rows, targets)
    if fmt == "junit":
        return render_junit(rows, model, gates)
    if fmt == "sarif":
        return render_sarif(rows, model, gates)
    raise UsageError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")


def _json_default(o: Any) -> Any:
    return str(o)


clean = finite_json  # non-finite floats -> None, so every output is strict JSON


def jsonl_line(row: dict[str, Any]) -> str:
    return json.dumps(clean({"schema_version": SCHEMA_VERSION, **row}), default=_json_default) + "\n"


TOP_PROBABILITIES = 3  # multilabel cells of the human tables: the most likely labels with their probabilities


def prediction_cell(target: Target, pred: dict[str, Any] | None) -> str:
    """One target's prediction as a person reads it. Multilabel: the top labels by probability
    ("sciq 0.51, arc_easy 0.49, mmlu_math 0.47, …"), not only the set above 0.5, so a prediction
    where every label sits near 0.5 reads as the coin toss it is."""
    if not pred:
        return ""
    probs = pred.get("probabilities")
    if target.kind == "multilabel" and isinstance(probs, dict) and probs:
        top = sorted(probs.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{label} {p:.2f}" for label, p in top[:TOP_PROBABILITIES])
        return shown + (", …" if len(top) > TOP_PROBABILITIES else "")
    return fmt_prediction(pred)


def _target_columns(t: Target, has_truth: bool) -> list[tuple[str, Any]]:
    """The columns one target adds to the human tables: (header, cell of a row). Columns that need more
    than the prediction (an interval, an in-domain flag) are added here, next to the prediction."""
    cols: list[tuple[str, Any]] = [(t.name + (f" [{t.units}]" if t.units else ""),
                                    lambda r: prediction_cell(t, (r.get("predictions") or {}).get(t.name)))]
    if has_truth:
        cols.append((f"{t.name} (true)", lambda r: fmt_value((r.get("truth") or {}).get(t.name))))
    return cols


def _flat(rows: Sequence[dict[str, Any]], targets: Sequence[Target], *, errors: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the human tables (the terminal table and markdown): every row is rendered here.
    ``errors=False`` leaves out the error column (the terminal prints each error once, on stderr)."""
    has_truth = any(r.get("truth") for r in rows)
    gate_names = list(dict.fromkeys(g["gate"] for r in rows for g in r.get("gates") or ()))
    columns: list[tuple[str, Any]] = [("adapter", lambda r: r["source"]), ("status", lambda r: r.get("status", ""))]
    for t in targets:
        columns += _target_columns(t, has_truth)
    if any(r.get("domain") for r in rows):  # the checkpoint has an in-domain reference
        columns.append(("domain", lambda r: fmt_domain(r.get("domain"))))
    for name in gate_names:
        columns.append((name, lambda r, name=name: _gate_cell(r, name)))
    if errors:
        columns.append(("error", lambda r: r.get("error") or ""))
    return [h for h, _ in columns], [[cell(r) for _, cell in columns] for r in rows]


def _gate_cell(r: dict[str, Any], name: str) -> str:
    g = next((g for g in r.get("gates") or () if g["gate"] == name), None)
    return "" if g is None else ("pass" if g["passed"] else f"FAIL ({g['value']:.4g})")


def render_csv(rows: Sequence[dict[str, Any]], targets: Sequence[Target]) -> str:
    """Machine CSV: raw numbers (not rounded), one column per target value/probability/truth/gate."""
    header = ["adapter", "status", "error"]
    label_cols: list[tuple[str, str | None]] = []
    for t in targets:
        header.append(t.name)
        label_cols.append((t.name, None))
        if t.kind == "regression" and any("interval" in ((r.get("predictions") or {}).get(t.name) or {}) for r in rows):
            header += [f"{t.name}.lo", f"{t.name}.hi"]
            label_cols += [(t.name, "lo"), (t.name, "hi")]
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
    has_domain = any(r.get("domain") for r in rows)
    if has_domain:
        header += ["domain_score", "in_domain"]
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
            elif part in ("lo", "hi"):
                iv = p.get("interval")
                line.append(iv[0 if part == "lo" else 1] if isinstance(iv, list) and len(iv) == 2 else "")
            else:
                line.append(p["probabilities"].get(part))
        if has_truth:
            for t in targets:
                v = (r.get("truth") or {}).get(t.name)
                line.append("|".join(v) if isinstance(v, list) else ("" if v is None else v))
        if has_domain:
            dom = r.get("domain") or {}
            line += [dom.get("score", ""), "" if "in_domain" not in dom else int(bool(dom["in_domain"]))]
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
    model_name = model.get("name") or NO_MODEL
    suite = ET.Element("testsuite", name=f"lolscan ({model_name})")
    tests = failures = errors = 0
    for r in rows:
        cases = [g.text for g in gates] or ["predict"]
        by_gate = {g["gate"]: g for g in r.get("gates") or ()}
        for name in cases:
            tests += 1
            case = ET.SubElement(suite, "testcase", classname=f"lolscan.{model_name}", name=f"{r['source']} :: {name}")
            if r.get("status") != "ok":
                errors += 1
                ET.SubElement(case, "error", message=r.get("error") or r.get("status", "error"), type=r.get("status", "error"))
                continue
            g = by_gate.get(name)
            if g is not None and not g["passed"]:
                failures += 1
                rel = "<" if g["op"] == "under" else ">"
                ET.SubElement(case, "failure", message=f"{g['target']} = {g['value']:.6g} {rel} {g['bound']:g}", type="gate")
            by_model = r.get("models") or {}  # several checkpoints: each target names its own
            preds = "; ".join(f"{k}={fmt_prediction(v)}" + (f" ({by_model[k]})" if k in by_model else "")
                              for k, v in (r.get("predictions") or {}).items())
            if r.get("domain"):
                preds += f"; in domain: {fmt_domain(r['domain'])}"
            ET.SubElement(case, "system-out").text = preds
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_RULES = {
    "lolscan/gate-failed": ("A prediction is outside a CI gate", "error",
                            "lolscan predict --fail-under/--fail-over: the checkpoint predicts a value beyond the bound."),
    "lolscan/does-not-fit": ("The adapter does not fit the checkpoint", "error",
                             "The adapter's modules or shapes are not those of the checkpoint's base model, so it cannot be scored."),
    "lolscan/unreadable": ("The adapter file cannot be read", "error",
                           "The file is missing, damaged, or of a kind lolscan refuses (a pickle without --allow-pickle)."),
}


def _sarif_location(source: str) -> dict[str, Any]:
    """A repository-relative file for code scanning: a PEFT folder is its adapter_config.json."""
    p = Path(source)
    if "://" in source or source.startswith(("civitai:", "urn:")) or not p.exists():
        uri = source if "://" in source or not p.is_absolute() else p.as_uri()
    else:
        if p.is_dir() and (p / "adapter_config.json").is_file():
            p = p / "adapter_config.json"
        try:
            uri = p.resolve().relative_to(Path.cwd().resolve()).as_posix()
        except ValueError:
            uri = p.resolve().as_uri()
    return {"physicalLocation": {"artifactLocation": {"uri": uri}}}


def render_sarif(rows: Sequence[dict[str, Any]], model: dict[str, Any], gates: Sequence[Gate]) -> str:
    """SARIF 2.1.0 for GitHub code scanning: one result per failed gate, unreadable adapter or adapter that
    does not fit (adapters that pass are not alerts; their predictions are in each result's properties)."""
    from .. import __version__

    name = model.get("name") or NO_MODEL
    results: list[dict[str, Any]] = []

    def add(rule: str, text: str, r: dict[str, Any], **props: Any) -> None:
        results.append({"ruleId": rule, "ruleIndex": list(SARIF_RULES).index(rule), "level": SARIF_RULES[rule][1],
                        "message": {"text": text}, "locations": [_sarif_location(r["source"])],
                        "properties": {"checkpoint": name, **props}})

    for r in rows:
        if r.get("status") == "incompatible":
            text = (f"{r['source']} does not fit checkpoint {name}: " if model.get("name") else f"{r['source']}: ") + (r.get("error") or "")
            add("lolscan/does-not-fit", text, r)
        elif r.get("status") != "ok":
            add("lolscan/unreadable", f"{r['source']}: {r.get('error') or r.get('status')}", r)
        for g in r.get("gates") or ():
            if not g["passed"]:
                rel = "below" if g["op"] == "under" else "above"
                by = (r.get("models") or {}).get(g["target"].partition(":")[0], name)  # several checkpoints: the target's
                add("lolscan/gate-failed", f"{g['target']} predicted {g['value']:.6g} by {by}, {rel} the gate {g['gate']}",
                    r, gate=g["gate"], value=g["value"], bound=g["bound"], predictions=r.get("predictions"))
    rules = [{"id": rid, "name": rid.split("/")[1], "shortDescription": {"text": short}, "fullDescription": {"text": full},
              "defaultConfiguration": {"level": level}} for rid, (short, level, full) in SARIF_RULES.items()]
    sarif = {
        "version": "2.1.0",
        "$schema": SARIF_SCHEMA,
        "runs": [{
            "tool": {"driver": {"name": "lolscan", "version": __version__, "informationUri": "https://pypi.org/project/lolscan/",
                                "rules": rules}},
            "results": results,
            "properties": {"checkpoint": model, "gates": [g.text for g in gates], "summary": summary(rows)},
        }],
    }
    return json.dumps(clean(sarif), indent=2, default=_json_default) + "\n"


def render_table(console: Any, rows: Sequence[dict[str, Any]], targets: Sequence[Target], title: str = "",
                 caption: str = "") -> None:
    """The terminal table. Errors are not repeated here: `predict` prints each one once on stderr."""
    from rich.markup import escape
    from rich.table import Table

    header, body = _flat(rows, targets, errors=False)
    table = Table(title=escape(title) if title else None, caption=escape(caption) if caption else None,
                  caption_justify="left", show_lines=False)
    for h in header:
        table.add_column(escape(h), overflow="fold")
    for line in body:
        styled = [f"[bold red]{escape(c)}[/]" if c.startswith("FAIL") or c in ("incompatible", "error") else escape(c)
                  for c in line]
        table.add_row(*styled)
    console.print(table)


# ---- predicted-vs-true plot (PNG without matplotlib) ------------------------------------------
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
