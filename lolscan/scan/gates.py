"""CI gates (``--fail-under`` / ``--fail-over``) and the verdict on a run's result rows: parse a gate,
check it against the checkpoint's targets, fill each row's ``gates``, and the exit code and summary
counts of the rows (the row format is described in `lolscan.scan.report`).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_INCOMPATIBLE, EXIT_OK, UsageError
from ..targets import Target


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
        if g.label is not None and (t.kind == "regression" or g.label not in t.labels):  # a count gates its value or a label's probability
            where = "a regression target has no classes" if t.kind == "regression" else f"labels: {', '.join(t.labels)}"
            raise UsageError(f"{g.text}: {t.name!r} has no class {g.label!r} ({where})")


def gate_value(gate: Gate, target: Target, prediction: dict[str, Any]) -> float:
    if target.kind == "regression" or (target.kind == "count" and gate.label is None):
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
