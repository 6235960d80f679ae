"""File helpers every layer shares: streamed hashes (LoRA files and manifests can be large), writes
that never leave a half-written file, and JSONL that a killed writer may have cut short."""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

CHUNK = 1 << 20

# The files of a PEFT adapter folder: what lolscan.sources downloads, lolscan.formats reads and a
# folder scan recognises.
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")


def finite_json(o: Any) -> Any:
    """Non-finite floats -> None (nested in dicts, lists and tuples), so every JSON output is strict JSON."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite_json(v) for v in o]
    return o


def sha256_file(path: str | os.PathLike) -> str:
    """Lower-case hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


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


def read_jsonl(path: str | Path, *, newline_ends_a_row: bool = True) -> tuple[list[Any], int]:
    """The rows of a JSONL file that a killed writer may have left with a torn last line, and the
    byte length of the lines read (truncate to it before appending more rows).

    Blank lines are skipped; reading stops at the first line that is not JSON. With
    ``newline_ends_a_row`` a last line without its newline counts as torn even when it parses (a
    crash may cut a row right after its closing brace); without it, such a line is read too.
    A missing file has no rows.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0
    rows: list[Any] = []
    good = 0
    for line in data.splitlines(keepends=True):
        if newline_ends_a_row and not line.endswith(b"\n"):
            break
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
        good += len(line)
    return rows, good
