"""Options shared by every command that reads adapters (remote sources, pickles)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SourceOptions:
    offline: bool = False
    civitai_token: str | None = None
    hf_token: str | None = None


def source_options(opts: SourceOptions) -> dict[str, Any]:
    """Keyword arguments for `lolscan.load` (only the ones that are set, so local-only builds work)."""
    out: dict[str, Any] = {}
    if opts.offline:
        out["offline"] = True
    if opts.civitai_token:
        out["civitai_token"] = opts.civitai_token
    if opts.hf_token:
        out["hf_token"] = opts.hf_token
    return out
