"""Known labels of adapters being scored: ``lolscan_labels`` in a file's metadata, then a
``labels.json`` next to it. No torch: the light reader processes look them up too."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..sources.uris import is_remote

LABELS_FILE = "labels.json"
METADATA_LABELS_KEY = "lolscan_labels"


class LabelFiles:
    """``labels.json`` files next to adapters, read once per folder: {name: {target: value}}."""

    def __init__(self) -> None:
        self._cache: dict[Path, dict[str, Any]] = {}

    def lookup(self, source: str) -> dict[str, Any]:
        """The entry of ``source`` (by file name or stem) in the ``labels.json`` beside it, else the entry of the
        folder that holds it in the ``labels.json`` beside that folder: an adapter folder whose weights file is
        the source (diffusers' ``NAME/pytorch_lora_weights.safetensors``) is labelled as a PEFT folder is."""
        if is_remote(source):
            return {}
        p = Path(source)
        return self._entry(p.parent, (p.name, p.stem)) or (self._entry(p.parent.parent, (p.parent.name,)) if p.parent.name else {})

    def _entry(self, folder: Path, keys: tuple[str, ...]) -> dict[str, Any]:
        if folder not in self._cache:
            data: dict[str, Any] = {}
            f = folder / LABELS_FILE
            if f.is_file():
                try:
                    loaded = json.loads(f.read_text(encoding="utf-8"))
                    data = loaded if isinstance(loaded, dict) else {}
                except (OSError, ValueError):
                    data = {}
            self._cache[folder] = data
        table = self._cache[folder]
        for key in keys:
            if isinstance(table.get(key), dict):
                return table[key]
        return {}


def known_labels(safetensors_metadata: Any, source: str, label_files: LabelFiles) -> dict[str, Any]:
    """Metadata ``lolscan_labels`` (a JSON object), overridden by the adapter's ``labels.json`` entry."""
    out: dict[str, Any] = {}
    raw = safetensors_metadata.get(METADATA_LABELS_KEY) if isinstance(safetensors_metadata, Mapping) else None
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
            if isinstance(parsed, dict):
                out.update(parsed)
        except ValueError:
            pass
    out.update(label_files.lookup(source))
    return out
