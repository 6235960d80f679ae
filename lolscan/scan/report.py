"""Prediction reports: the table/json/jsonl/csv/markdown/junit/sarif renderers of result rows (CI gates
and exit codes: `lolscan.scan.gates`; the predicted-vs-true PNG: `lolscan.scan.plot`).

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..targets import Target
from ..utils.files import finite_json
from .gates import Gate, summary

SCHEMA_VERSION = 1
NO_MODEL = "no checkpoint"  # what JUnit and SARIF call the model of a run where no bundled checkpoint fits any adapter
FORMATS = ("table", "json", "jsonl", "csv", "markdown", "junit", "sarif")
_SUFFIX_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".md": "markdown", ".xml": "junit",
                   ".sarif": "sarif"}


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
    """"yes 0.8" / "NO 3.1": whether the adapter is like the checkpoint's training adapters, and its score. Where
    several checkpoints disagree (`CheckpointSet.domain_rows`), "NO 3.1 (a, b; 2 others yes)": which say no."""
    if not dom or not isinstance(dom.get("score"), (int, float)):
        return ""
    text = f"{'yes' if dom.get('in_domain') else 'NO'} {dom['score']:.2g}"
    each = dom.get("models")
    if isinstance(each, dict) and not dom.get("in_domain"):
        outside = [name for name, a in each.items() if not (a or {}).get("in_domain")]
        if 0 < len(outside) < len(each):
            rest = len(each) - len(outside)
            text += f" ({', '.join(outside)}; {rest} other{'s' if rest > 1 else ''} yes)"
    return text


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
    where every label sits near 0.5 reads as the coin toss it is. Count: the value and the labels
    it counted."""
    if not pred:
        return ""
    probs = pred.get("probabilities")
    called = pred.get("labels")
    if target.kind == "count" and isinstance(called, list):  # "21 (3 classes: Bag, Coat, Dress)"
        shown = ", ".join(str(x) for x in called[:TOP_PROBABILITIES]) + (", …" if len(called) > TOP_PROBABILITIES else "")
        return f"{fmt_value(pred.get('value'))} ({len(called)} {target.source}{': ' + shown if called else ''})"
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
        elif t.kind in ("multiclass", "multilabel", "count"):
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
