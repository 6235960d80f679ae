"""Expanding command-line targets (files, folders, globs, URIs) into adapter sources.

A folder holding ``adapter_config.json`` is ONE PEFT adapter. Any other folder is scanned
recursively for ``*.safetensors`` files and PEFT folders (hidden folders are skipped; pickle
files only when pickles are allowed). Results are sorted and de-duplicated, so the same
command always scores the same adapters in the same order.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .manifest import is_uri
from .formats.peft import CONFIG_NAME, is_peft_folder
from .tensorfile import PICKLE_SUFFIXES



@dataclass(frozen=True)
class Found:
    """One adapter to score, or a target that named nothing readable (error set)."""

    source: str
    error: str | None = None


def _adapter_file(p: Path, allow_pickle: bool) -> bool:
    suffix = p.suffix.lower()
    return suffix == ".safetensors" or (allow_pickle and suffix in PICKLE_SUFFIXES)


def scan_folder(root: Path, *, allow_pickle: bool = False) -> Iterator[Path]:
    """Adapters under `root` in sorted order (PEFT folders are not descended into)."""
    if is_peft_folder(root):
        yield root
        return
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        p = Path(entry.path)
        if entry.is_dir():  # follows symlinks, like the loader will
            yield from scan_folder(p, allow_pickle=allow_pickle)
        elif entry.is_file() and _adapter_file(p, allow_pickle):
            yield p


def _peft_ancestor(p: Path) -> Path | None:
    for parent in p.parents:
        if is_peft_folder(parent):
            return parent
    return None


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def expand(targets: Iterable[str], *, allow_pickle: bool = False) -> list[Found]:
    """Every adapter the targets name, in argument order, each folder/glob sorted, no duplicates."""
    out: list[Found] = []
    seen: set[str] = set()

    def add(found: Found) -> None:
        key = found.source if is_uri(found.source) or found.error else str(Path(found.source).resolve())
        if key not in seen:
            seen.add(key)
            out.append(found)

    for target in targets:
        if is_uri(target):
            add(Found(target))
            continue
        p = Path(target).expanduser()
        if p.is_dir():
            found = list(scan_folder(p, allow_pickle=allow_pickle))
            if not found:
                add(Found(str(p), error="folder holds no adapter files (*.safetensors or PEFT folders)"))
            for f in found:
                add(Found(str(f)))
        elif p.exists():
            add(Found(str(p)))  # an explicit file is tried whatever its suffix; the loader decides
        elif _has_magic(target):
            matches = sorted(glob.glob(os.path.expanduser(target), recursive=True))
            hits = []
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    hits.extend(scan_folder(mp, allow_pickle=allow_pickle))
                elif mp.name == CONFIG_NAME or _adapter_file(mp, allow_pickle):
                    hits.append(_peft_ancestor(mp) or mp)  # a file inside a PEFT folder stands for the folder
            if not hits:
                add(Found(target, error="pattern matches no adapter files"))
            for h in hits:
                add(Found(str(h)))
        else:
            add(Found(str(p), error="no such file or folder"))
    return out
