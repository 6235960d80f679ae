"""Labelled adapter sets: a CSV or JSONL file with one row per adapter.

Columns: ``path`` or ``uri`` (relative paths resolve against the manifest's folder), label
columns, and optionally ``split`` (train / val / test) or ``group`` (rows sharing a group never
straddle splits).
"""
from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError, UsageError
from .targets import is_missing

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}
RESERVED = {"path", "uri", "split", "group"}


@dataclass
class ManifestRow:
    source: str  # resolved path or URI, as passed to lolscan.load
    labels: dict[str, Any]
    split: str | None = None
    group: str | None = None
    line: int = 0


@dataclass
class Manifest:
    path: str
    rows: list[ManifestRow]
    columns: list[str]
    has_split: bool = False
    has_group: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def label_columns(self) -> list[str]:
        return [c for c in self.columns if c not in RESERVED]

    def column(self, name: str) -> list[Any]:
        return [r.labels.get(name) for r in self.rows]

    def require_columns(self, names: list[str]) -> None:
        missing = [n for n in names if n not in self.label_columns]
        if missing:
            raise UsageError(
                f"{self.path}: no column {', '.join(map(repr, missing))} "
                f"(label columns: {', '.join(self.label_columns) or 'none'})"
            )


def is_uri(s: str) -> bool:
    """A remote LoRA reference (hf://, civitai:, AIR, Hub/Civitai URLs), as lolscan.sources reads them."""
    from .sources import is_remote

    return is_remote(s)


def read_manifest(path: str | Path) -> Manifest:
    """Read a CSV (.csv/.tsv) or JSONL (.jsonl/.ndjson/.json lines) manifest."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError("manifest not found", path=p) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read manifest: {exc}", path=p) from None
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        records = _read_jsonl(text, p)
    elif suffix in (".csv", ".tsv", ".txt"):
        records = _read_csv(text, p, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        first = text.lstrip()[:1]
        records = _read_jsonl(text, p) if first == "{" else _read_csv(text, p, delimiter=",")
    if not records:
        raise InputError("manifest has no rows", path=p)

    columns: list[str] = []
    for _, rec in records:
        for k in rec:
            if k not in columns:
                columns.append(k)
    src_col = "path" if "path" in columns else "uri" if "uri" in columns else None
    if src_col is None:
        raise InputError(f"manifest needs a 'path' or 'uri' column (columns: {', '.join(columns)})", path=p)
    has_split, has_group = "split" in columns, "group" in columns
    base = p.resolve().parent
    rows: list[ManifestRow] = []
    for line, rec in records:
        raw = rec.get("path") if not is_missing(rec.get("path")) else rec.get("uri")
        if is_missing(raw):
            raise InputError(f"line {line}: empty {src_col}", path=p)
        raw = str(raw).strip()
        if is_uri(raw):
            source = raw
        else:
            q = Path(raw).expanduser()
            source = str(q if q.is_absolute() else (base / q).resolve())
        split = None
        if has_split and not is_missing(rec.get("split")):
            s = str(rec["split"]).strip().lower()
            if s not in _SPLIT_ALIASES:
                raise InputError(f"line {line}: split {rec['split']!r} is not one of train/val/test", path=p)
            split = _SPLIT_ALIASES[s]
        group = None if is_missing(rec.get("group")) else str(rec.get("group")).strip()
        labels = {k: v for k, v in rec.items() if k not in RESERVED}
        rows.append(ManifestRow(source=source, labels=labels, split=split, group=group, line=line))
    if has_split and any(r.split is None for r in rows):
        bad = next(r.line for r in rows if r.split is None)
        raise InputError(f"line {bad}: empty split (every row needs train/val/test when the column is present)", path=p)
    return Manifest(str(p), rows, columns, has_split=has_split, has_group=has_group)


def _read_jsonl(text: str, p: Path) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"line {i}: not valid JSON ({exc.msg})", path=p) from None
        if not isinstance(rec, dict):
            raise InputError(f"line {i}: a JSONL manifest row must be an object", path=p)
        out.append((i, rec))
    return out


def _read_csv(text: str, p: Path, delimiter: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    if not reader.fieldnames:
        return []
    out = []
    try:
        for rec in reader:
            if None in rec:
                raise InputError(f"line {reader.line_num}: more cells than header columns", path=p)
            if all(is_missing(v) for v in rec.values()):
                continue
            out.append((reader.line_num, {k.strip(): v for k, v in rec.items()}))
    except csv.Error as exc:
        raise InputError(f"line {reader.line_num}: {exc}", path=p) from None
    return out


def assign_splits(
    manifest: Manifest, *, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> dict[str, list[int]]:
    """Row indices per split.

    A ``split`` column is used as given (an empty val split is carved out of train by group).
    Otherwise groups (a ``group`` column, else one group per row) are shuffled with `seed`
    and dealt to test, then val, then train until each reaches its share of rows, so no group
    straddles two splits.
    """
    rows = manifest.rows
    if manifest.has_split:
        out = {s: [i for i, r in enumerate(rows) if r.split == s] for s in SPLITS}
        if not out["val"] and out["train"]:
            carved = _deal({"val": val_fraction / max(1e-9, 1 - test_fraction)}, out["train"], rows, seed)
            out["val"] = carved["val"]
            out["train"] = carved["train"]
    else:
        out = _deal({"test": test_fraction, "val": val_fraction}, list(range(len(rows))), rows, seed)
    if not out["train"]:
        raise UsageError(f"{manifest.path}: the training split is empty")
    return out


def _deal(shares: dict[str, float], idx: list[int], rows: list[ManifestRow], seed: int) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i in idx:
        key = rows[i].group if rows[i].group is not None else f"\0row{i}"
        groups.setdefault(key, []).append(i)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    n = len(idx)
    targets = {s: round(f * n) for s, f in shares.items()}
    for key in keys:
        for s, want in targets.items():
            if len(out[s]) < want:
                out[s].extend(groups[key])
                break
        else:
            out["train"].extend(groups[key])
    return {s: sorted(v) for s, v in out.items()}
