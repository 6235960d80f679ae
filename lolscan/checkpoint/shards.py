"""A checkpoint's weights in one ``model.safetensors`` or, past a size, in shards as transformers and
huggingface_hub write them: ``model-00001-of-0000N.safetensors`` … and ``model.safetensors.index.json``
(``{"metadata": {"total_size": …}, "weight_map": {tensor: shard}}``).

Sharding exists for hosts that cap a file's size (a git remote, a wheel's package data): a 10-member
ensemble in float16 is ≈ 24 MB. Reading trusts nothing in the index: every shard name must be one of
the N the index promises, every shard must hold exactly the tensors mapped to it, none may hold a tensor
twice, and each file goes through the validating safetensors reader.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .card import WEIGHTS_NAME, CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SHARD_NAME = re.compile(r"model-(\d{5})-of-(\d{5})\.safetensors")
METADATA = {"format": "pt", "lolscan": "checkpoint"}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """``--max-shard-size``: bytes, or a number with KB/MB/GB (powers of 10) or KiB/MiB/GiB, as huggingface_hub
    reads ``max_shard_size``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise UsageError(f"{text!r}: expected a size such as 16MB, 10MiB or 5000000")
    size = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if size < 1:
        raise UsageError(f"{text!r}: a shard must hold at least one byte")
    return size


def plan_shards(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Tensor names in order, cut into runs of at most ``max_bytes`` (a larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def write_weights(state: dict[str, Any], folder: Path, max_bytes: int | None = None) -> list[str]:
    """Write ``state`` (name → CPU tensor) into ``folder``: one file, or shards and the index when it is
    larger than ``max_bytes``. Returns the file names written."""
    from safetensors.torch import save_file

    sizes = {k: v.numel() * v.element_size() for k, v in state.items()}
    if max_bytes is None or sum(sizes.values()) <= max_bytes:
        save_file(state, str(folder / WEIGHTS_NAME), metadata=METADATA)
        return [WEIGHTS_NAME]
    plan = plan_shards(sizes, max_bytes)
    names = [f"model-{i:05d}-of-{len(plan):05d}.safetensors" for i in range(1, len(plan) + 1)]
    for name, keys in zip(names, plan):
        save_file({k: state[k] for k in keys}, str(folder / name), metadata=METADATA)
    index = {"metadata": {"total_size": sum(sizes.values())},
             "weight_map": {k: name for name, keys in zip(names, plan) for k in keys}}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return [*names, INDEX_NAME]


def weight_files(folder: Path) -> list[Path]:
    """The files holding ``folder``'s weights as `read_weights` would read them: the single file, or the shards the
    index names and the index ([] when neither is there; nothing is validated)."""
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    if (folder / INDEX_NAME).is_file():
        return sorted(p for p in folder.iterdir() if SHARD_NAME.fullmatch(p.name)) + [folder / INDEX_NAME]
    return []


def read_weights(folder: Path) -> tuple[dict[str, Any], str]:
    """The tensors of ``folder``'s weights (one file or shards) and the name to cite for them. Raises
    `CheckpointError` naming the file at fault."""
    from ..formats.tensorfile import read_safetensors

    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.exists() and index.exists():
        raise CheckpointError(f"holds both {WEIGHTS_NAME} and {INDEX_NAME}: remove the stale one", path=folder)
    if not index.exists():
        if not single.is_file():
            raise CheckpointError(f"missing {WEIGHTS_NAME}", path=folder)
        return dict(read_safetensors(single).tensors.items()), WEIGHTS_NAME  # validating reader
    by_shard = _read_index(index)
    tensors: dict[str, Any] = {}
    for name, keys in by_shard.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{INDEX_NAME} names {name}, which is missing", path=folder)
        held = dict(read_safetensors(path).tensors.items())
        if set(held) != keys:
            extra, lost = sorted(set(held) - keys), sorted(keys - set(held))
            what = f"holds {extra[0]!r}, which the index maps elsewhere" if extra else f"lacks {lost[0]!r}, which the index maps to it"
            raise CheckpointError(what, path=path)
        tensors.update(held)
    return tensors, INDEX_NAME


def _read_index(path: Path) -> dict[str, set[str]]:
    """The index's weight map by shard, after checking that it names shards 1…N of one N and nothing else."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"unreadable index: {exc}", path=path) from None
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not wmap or not all(isinstance(k, str) and isinstance(v, str) for k, v in wmap.items()):
        raise CheckpointError("weight_map must map tensor names to shard file names", path=path)
    by_shard: dict[str, set[str]] = {}
    for key, name in wmap.items():
        by_shard.setdefault(name, set()).add(key)
    numbers = []
    for name in by_shard:
        m = SHARD_NAME.fullmatch(name)
        if not m:
            raise CheckpointError(f"{name!r} is not a shard name (model-NNNNN-of-NNNNN.safetensors)", path=path)
        numbers.append((int(m.group(1)), int(m.group(2))))
    total = {n for _, n in numbers}
    if len(total) != 1 or sorted(i for i, _ in numbers) != list(range(1, next(iter(total)) + 1)):
        raise CheckpointError(f"the weight map names shards {sorted(by_shard)}, not 1…N of one N", path=path)
    return by_shard
