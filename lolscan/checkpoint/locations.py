"""Where checkpoints live: the bundled and user folders, ``--model NAME|PATH`` and ``--out``, the default
model, and the list of installed checkpoints (cards only)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..targets import Target
from .card import CARD_NAME, CheckpointError, read_card


def bundled_dir() -> Path:
    """Pretrained checkpoints shipped with lolscan, or $LOLSCAN_MODELS_DIR.

    An installed wheel carries them as package data in ``lolscan/_models`` (setup.py maps the
    repository's ``models/`` there at build time); a checkout (or an editable install) reads the
    repository's ``models/`` beside the package.
    """
    env = os.environ.get("LOLSCAN_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    import lolscan

    package = Path(lolscan.__file__).resolve().parent
    inside = package / "_models"
    if inside.is_dir():
        return inside
    return package.parent / "models"


def user_dir() -> Path:
    """The user's own checkpoints: ``<user data dir>/models`` ($LOLSCAN_DATA_DIR replaces the data dir)."""
    env = os.environ.get("LOLSCAN_DATA_DIR")
    if env:
        return Path(env).expanduser() / "models"
    import platformdirs

    return Path(platformdirs.user_data_dir("lolscan")) / "models"


def is_checkpoint(p: Path) -> bool:
    return p.is_dir() and (p / CARD_NAME).is_file()


def looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.startswith((".", "~"))


def output_path(out: str) -> Path:
    """``--out``: a path when it contains a slash, else a name in the user checkpoint folder."""
    if looks_like_path(out):
        return Path(out).expanduser()
    if not out or out in (".", "..") or any(c in out for c in '\\:*?"<>|'):
        raise UsageError(f"--out {out!r}: not a usable checkpoint name")
    return user_dir() / out


def resolve(model: str) -> Path:
    """``--model NAME|PATH``: an existing path, then a user checkpoint name, then a bundled one."""
    p = Path(model).expanduser()
    if p.exists():
        if not is_checkpoint(p):
            raise CheckpointError(f"not a lolscan checkpoint (no {CARD_NAME})", path=p)
        return p
    if not looks_like_path(model):
        for root in (user_dir(), bundled_dir()):
            if is_checkpoint(root / model):
                return root / model
    names = sorted({info["name"] for info in list_checkpoints()})
    hint = f"available: {', '.join(names)}" if names else "no checkpoints are installed; train one with `lolscan train`"
    raise UsageError(f"--model {model!r}: no such checkpoint folder or name ({hint})")


def default_model() -> Path:
    """The model `lolscan eval` uses without --model (and `lolscan predict` where no checkpoint is bundled;
    else it uses every bundled one that fits, `lolscan.scan.auto`): a bundled card marked
    ``"default": true``, else the only one."""
    infos = [i for i in list_checkpoints() if not i.get("error")]
    marked = [i for i in infos if i.get("default") and i["origin"] == "bundled"]
    if marked:
        return Path(marked[0]["path"])
    if len(infos) == 1:
        return Path(infos[0]["path"])
    names = ", ".join(sorted(i["name"] for i in infos)) or "none installed"
    raise UsageError(f"no --model given and no default checkpoint (available: {names})")


def list_checkpoints() -> list[dict[str, Any]]:
    """Cards of user then bundled checkpoints (cards only; weights are not read)."""
    out = []
    for origin, root in (("user", user_dir()), ("bundled", bundled_dir())):
        if not root.is_dir():
            continue
        for p in sorted(root.iterdir()):
            if not is_checkpoint(p) or p.name.startswith("."):
                continue
            info: dict[str, Any] = {"name": p.name, "origin": origin, "path": str(p)}
            try:
                card = read_card(p)
            except CheckpointError as exc:
                info["error"] = str(exc)
                out.append(info)
                continue
            info.update(
                architecture=card["architecture"],
                task=task_summary([Target.from_json(t) for t in card["targets"]]),
                base_model=card.get("base_model", "unknown"),
                metrics=card.get("metrics", {}).get("test", {}),
                default=bool(card.get("default", False)),
                description=card.get("description", ""),
            )
            if isinstance(card.get("ensemble"), dict):  # models of several seeds, outputs averaged: how many
                info["ensemble"] = card["ensemble"]["members"]
            out.append(info)
    return out


def task_summary(targets: list[Target]) -> str:
    return "; ".join(t.describe() for t in targets)
