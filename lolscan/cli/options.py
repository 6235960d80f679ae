"""Options shared by every command that reads adapters (pickles, remote sources), declared once."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

AllowPickle = Annotated[bool, typer.Option("--allow-pickle", help="Open .pt/.bin/.ckpt with torch.load(weights_only=True).")]
FollowSymlinks = Annotated[bool, typer.Option("--follow-symlinks", help="Let a folder scan follow symbolic links out of the folder (by default such links are reported, not read).")]
Device = Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda", help="Where the model runs (auto: a GPU when there is one).")]
Offline = Annotated[bool, typer.Option("--offline", help="Never touch the network; cached remote files only.")]
CivitaiToken = Annotated[Optional[str], typer.Option("--civitai-token", metavar="TOKEN", envvar="CIVITAI_TOKEN", show_envvar=True, help="Civitai API token (never printed).")]
HfToken = Annotated[Optional[str], typer.Option("--hf-token", metavar="TOKEN", envvar="HF_TOKEN", show_envvar=True, help="Hugging Face token (never printed).")]


def source_options(offline: bool, civitai_token: str | None, hf_token: str | None) -> dict[str, Any]:
    """Keyword arguments for `lolscan.load` (only the ones that are set, so local-only builds work)."""
    out: dict[str, Any] = {}
    if offline:
        out["offline"] = True
    if civitai_token:
        out["civitai_token"] = civitai_token
    if hf_token:
        out["hf_token"] = hf_token
    return out
