"""Remote LoRA sources: Hugging Face Hub and Civitai references resolved to local files.

`resolve()` turns `hf://…`, `civitai:…`, AIR strings and huggingface.co / civitai.com URLs into a
local file or PEFT folder in a verified cache, plus the model card / Civitai metadata. Tokens are
only ever sent as request headers; they never appear in a URI, message, metadata or cache path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .uris import HfRef, is_remote, parse

__all__ = ["Resolved", "is_remote", "resolve"]


@dataclass
class Resolved:
    path: Path  # a local file, or a local PEFT folder (adapter_config.json + weights)
    uri: str  # canonical, pinned where possible, never containing a token
    metadata: dict = field(default_factory=dict)


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def resolve(
    target: str,
    *,
    offline: bool = False,
    civitai_token: str | None = None,
    hf_token: str | None = None,
    progress: bool = True,
) -> Resolved:
    """Fetch (or find in the cache) the LoRA named by `target`. Every failure is an `InputError`."""
    ref = parse(target)
    secrets = [civitai_token or "", hf_token or "", getattr(ref, "token", None) or "",
               os.environ.get("CIVITAI_TOKEN", ""), os.environ.get("HF_TOKEN", "")]
    try:
        if isinstance(ref, HfRef):
            from .hub import resolve_hf

            result = resolve_hf(ref, offline=offline, token=hf_token, progress=progress)
        else:
            from .civitai import resolve_civitai

            result = resolve_civitai(ref, offline=offline, token=civitai_token, progress=progress)
    except InputError as exc:
        clean = _scrub(str(exc), secrets)
        if clean != str(exc):
            raise InputError(clean) from None
        raise
    except OSError as exc:  # disk full, permissions, a cache on a read-only filesystem
        detail = _scrub(exc.strerror or type(exc).__name__, secrets)
        raise InputError(f"cannot use the download cache ({detail})", path=ref.uri) from None
    result.metadata["local_path"] = str(result.path)  # where the cached copy lives (inspect hashes it)
    return result
