"""Expanding command-line targets (files, folders, globs, URIs) into adapter sources.

A folder holding ``adapter_config.json`` is ONE PEFT adapter. Any other folder is scanned
recursively for ``*.safetensors`` files and PEFT folders (hidden folders are skipped; pickle
files only when pickles are allowed). Results are sorted and de-duplicated, so the same
command always scores the same adapters in the same order.
"""
from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..manifest import is_uri
from ..formats.peft_config import CONFIG_NAME, WEIGHT_NAMES, is_peft_folder
from ..formats.stheader import PICKLE_SUFFIXES, file_kind  # not formats.tensorfile: that imports torch



@dataclass(frozen=True)
class Found:
    """One adapter to score, or a target that named nothing readable (error set)."""

    source: str
    error: str | None = None


def _adapter_file(p: Path, allow_pickle: bool) -> bool:
    suffix = p.suffix.lower()
    return suffix == ".safetensors" or (allow_pickle and suffix in PICKLE_SUFFIXES)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def scan_folder(root: Path, *, allow_pickle: bool = False, follow_symlinks: bool = False) -> Iterator[Found]:
    """Adapters under `root` in sorted order (PEFT folders are not descended into), and what was refused.

    Without ``follow_symlinks`` the scan never leaves `root` through a symbolic link: a link whose
    target lies outside it (and a PEFT folder holding such a link) is reported as an error, not read.
    Links that loop or dangle, FIFOs, devices and sockets named like adapters are reported too; the
    scan itself never opens them. A folder reached twice (links) is scanned once.
    """
    real_root = os.path.realpath(root)
    seen: set[str] = set()
    yield from _scan(root, real_root, seen, allow_pickle, follow_symlinks, top=True)


def _scan(folder: Path, real_root: str, seen: set[str], allow_pickle: bool, follow: bool, *, top: bool = False) -> Iterator[Found]:
    real = os.path.realpath(folder)
    if real in seen:
        return
    seen.add(real)
    if is_peft_folder(folder):
        if not top and not follow:
            for name in (CONFIG_NAME, *WEIGHT_NAMES):
                f = folder / name
                if f.is_symlink() and not _inside(os.path.realpath(f), real_root):
                    yield Found(str(folder), error=f"{name} is a symbolic link out of the scanned folder; not followed "
                                                   "(pass --follow-symlinks to read it)")
                    return
        yield Found(str(folder))
        return
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        p = Path(entry.path)
        named_like = _adapter_file(p, allow_pickle)
        try:
            if entry.is_symlink():
                try:
                    target = os.path.realpath(p, strict=True)
                except (OSError, RuntimeError):  # ELOOP, a dangling link
                    if named_like:
                        yield Found(str(p), error="symbolic link that loops or points nowhere")
                    continue
                if not follow and not _inside(target, real_root):
                    if named_like or os.path.isdir(target):
                        yield Found(str(p), error="symbolic link out of the scanned folder; not followed (pass --follow-symlinks to read it)")
                    continue
            st = os.stat(p)
        except OSError as exc:
            if named_like:
                yield Found(str(p), error=f"cannot read: {exc.strerror or exc}")
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _scan(p, real_root, seen, allow_pickle, follow)
        elif named_like:
            yield Found(str(p)) if stat.S_ISREG(st.st_mode) else Found(str(p), error=f"not a regular file ({file_kind(st.st_mode)}); not read")


def _peft_ancestor(p: Path) -> Path | None:
    for parent in p.parents:
        if is_peft_folder(parent):
            return parent
    return None


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def expand(targets: Iterable[str], *, allow_pickle: bool = False, follow_symlinks: bool = False) -> list[Found]:
    """Every adapter the targets name, in argument order, each folder/glob sorted, no duplicates.

    Targets named explicitly (files, PEFT folders, glob matches) are read wherever they point;
    folders are scanned within themselves unless ``follow_symlinks`` (see `scan_folder`)."""
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
            found = list(scan_folder(p, allow_pickle=allow_pickle, follow_symlinks=follow_symlinks))
            if not found:
                add(Found(str(p), error="folder holds no adapter files (*.safetensors or PEFT folders)"))
            for f in found:
                add(f)
        elif p.exists():
            add(Found(str(p)))  # an explicit file is tried whatever its suffix; the loader decides
        elif _has_magic(target):
            matches = sorted(glob.glob(os.path.expanduser(target), recursive=True))
            hits: list[Found] = []
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    hits.extend(scan_folder(mp, allow_pickle=allow_pickle, follow_symlinks=follow_symlinks))
                elif mp.name == CONFIG_NAME or _adapter_file(mp, allow_pickle):
                    hits.append(Found(str(_peft_ancestor(mp) or mp)))  # a file inside a PEFT folder stands for the folder
            if not hits:
                add(Found(target, error="pattern matches no adapter files"))
            for h in hits:
                add(h)
        else:
            add(Found(str(p), error="no such file or folder"))
    return out
