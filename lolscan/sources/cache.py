"""lolscan's download cache: where it lives, locks, atomic writes and verified downloads.

An entry only ever appears by `os.replace` of a fully written temporary file whose size and
SHA-256 were checked, so a reader never sees a partial or unverified file. Writers of the same
entry serialise on a `filelock.FileLock` (works across threads and processes) and re-check
after acquiring it, so concurrent scans download a file once and never corrupt it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import platformdirs
from filelock import FileLock

from ..utils.files import atomic_write
from ..errors import InputError

CHUNK = 1 << 20


def cache_root() -> Path:
    """`LOLSCAN_CACHE_DIR`, else `platformdirs.user_cache_dir("lolscan")`; read at call time."""
    return Path(os.environ.get("LOLSCAN_CACHE_DIR") or platformdirs.user_cache_dir("lolscan")).expanduser()


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read at call time (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def safe_name(name: str, default: str = "file") -> str:
    """A file name safe on every platform: the last path component, odd characters replaced."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._()+ -]", "_", base).strip(" .")
    return base[:200] or default


@contextlib.contextmanager
def entry_lock(path: Path, timeout: float = -1) -> Iterator[None]:
    """Exclusive lock for writing `path` (a sibling `.lock` file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout):
        yield


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True))


@contextlib.contextmanager
def progress_bar(label: str, total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich download bar on stderr; yields `advance(nbytes)`. Disabled bars cost nothing."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def store_verified(
    dest: Path,
    read: Callable[[int], bytes],
    *,
    uri: str,
    declared_size: int | None,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    expected_prefix: str | None = None,
    progress: bool = True,
) -> tuple[str, int]:
    """Stream `read(n)` into a temp file next to `dest`, verify, then rename into place.

    `declared_size` is the Content-Length (detects a cut connection); `expected_size` and
    `expected_sha256` are what the source publishes; `expected_prefix` checks a short hash such as
    AutoV2 when no full SHA-256 is published. Returns (SHA-256 upper hex, size). On any failure the
    temp file is removed and nothing is left in the cache. The caller holds `entry_lock(dest)`.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-", suffix=".download")
    h = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as fh, progress_bar(dest.name, declared_size or expected_size, progress) as advance:
            while True:
                try:
                    block = read(CHUNK)
                except (OSError, ValueError) as exc:  # connection reset, http.client.IncompleteRead, timeouts
                    raise InputError(
                        f"download interrupted after {size} bytes ({type(exc).__name__}); nothing was cached", path=uri
                    ) from None
                if not block:
                    break
                fh.write(block)
                h.update(block)
                size += len(block)
                advance(len(block))
        digest = h.hexdigest().upper()
        if declared_size is not None and size != declared_size:
            raise InputError(
                f"download interrupted: got {size} of {declared_size} bytes; nothing was cached", path=uri
            )
        if expected_size is not None and size != expected_size:
            raise InputError(f"downloaded {size} bytes but {expected_size} were expected; nothing was cached", path=uri)
        if expected_sha256 is not None and digest != expected_sha256.upper():
            raise InputError(
                f"SHA-256 mismatch: the source publishes {expected_sha256.upper()[:16]}…, the download is "
                f"{digest[:16]}…; nothing was cached",
                path=uri,
            )
        if expected_sha256 is None and expected_prefix and not digest.startswith(expected_prefix.upper()):
            raise InputError(
                f"hash mismatch: the source publishes {expected_prefix.upper()}, the download is {digest[:10]}; "
                "nothing was cached",
                path=uri,
            )
        os.replace(tmp, dest)
        return digest, size
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
