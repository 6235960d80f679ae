"""Resolve `hf://` references with huggingface_hub itself (its cache, HF_TOKEN, HF_ENDPOINT).

Online: one `model_info` call resolves the revision to a commit and lists the repo's files; the
plan (`plan_files`) picks the PEFT pair or the single LoRA file; `snapshot_download` with
allow-patterns (PEFT) or `hf_hub_download` (one file) fetches exactly those; README.md's YAML
header gives the card metadata (non-fatal). A small record in lolscan's cache remembers the plan
and card per (repo, revision, path), so offline mode and pinned commits answer from the Hugging
Face cache with `local_files_only=True` and no network.

huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and HF_HOME once at import; this module reads
them at every call and passes `endpoint=`, `cache_dir=` and `local_files_only=` explicitly.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import InputError
from ..utils.files import PEFT_CONFIG_NAME as PEFT_CONFIG, PEFT_WEIGHT_NAMES as PEFT_WEIGHTS, sha256_file
from . import Resolved
from .cache import cache_root, hf_cache_dir, read_json, write_json_atomic
from .uris import HfRef, hf_endpoint, is_commit_sha

DIFFUSERS_LORA = "pytorch_lora_weights.safetensors"
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class Plan:
    kind: str  # "peft" (a folder) or "file"
    files: tuple[str, ...]  # repo paths to fetch
    target: str  # the folder ("" = repo root) or the file that `Resolved.path` points at


def _peft_in(folder: str, names: set[str], shown: str) -> Plan | None:
    prefix = f"{folder}/" if folder else ""
    if prefix + PEFT_CONFIG not in names:
        return None
    for w in PEFT_WEIGHTS:
        if prefix + w in names:
            return Plan("peft", (prefix + PEFT_CONFIG, prefix + w), folder)
    raise InputError(f"{prefix + PEFT_CONFIG} has no adapter_model.safetensors or .bin next to it", path=shown)


def plan_files(siblings: list[str], path: str | None, shown: str) -> Plan:
    """Choose what to download from a repo's file list (pure; no network)."""
    names = set(siblings)
    if path is not None and path in names:
        p = PurePosixPath(path)
        if p.name in PEFT_WEIGHTS or p.name == PEFT_CONFIG:  # one half of a PEFT pair: fetch the folder
            folder = "" if str(p.parent) == "." else str(p.parent)
            plan = _peft_in(folder, names, shown)
            if plan is not None:
                return plan
        return Plan("file", (path,), path)
    folder = path or ""
    prefix = f"{folder}/" if folder else ""
    inside = sorted(n for n in names if n.startswith(prefix))
    if path is not None and not inside:
        raise InputError(f"no file or folder {path!r} in the repository", path=shown)
    plan = _peft_in(folder, names, shown)
    if plan is not None:
        return plan
    top = [n for n in inside if "/" not in n[len(prefix):] and n.endswith(".safetensors")]
    if len(top) == 1:
        return Plan("file", (top[0],), top[0])
    if prefix + DIFFUSERS_LORA in top:
        return Plan("file", (prefix + DIFFUSERS_LORA,), prefix + DIFFUSERS_LORA)
    candidates = top
    if not top:  # nothing at this level: LoRA files or PEFT folders deeper down
        peft_dirs = sorted({str(PurePosixPath(n).parent) for n in inside if PurePosixPath(n).name == PEFT_CONFIG})
        deep = [n for n in inside if n.endswith(".safetensors") and str(PurePosixPath(n).parent) not in peft_dirs]
        candidates = peft_dirs + deep
        if len(candidates) == 1:
            if peft_dirs:
                return _peft_in(peft_dirs[0], names, shown)  # type: ignore[return-value]
            return Plan("file", (deep[0],), deep[0])
    if not candidates:
        raise InputError("no adapter_config.json and no .safetensors file in the repository", path=shown)
    listed = ", ".join(candidates[:8]) + (f", … ({len(candidates) - 8} more)" if len(candidates) > 8 else "")
    raise InputError(
        f"several possible LoRA files ({listed}); name one as hf://owner/repo[@revision]/<path>", path=shown
    )


def _offline_requested(offline: bool) -> bool:
    if offline:
        return True
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _record_path(ref: HfRef) -> Path:
    key = hashlib.sha256(f"{ref.revision or 'main'}\0{ref.path or ''}".encode()).hexdigest()[:24]
    return cache_root() / "hf" / ref.repo_id.replace("/", "--") / f"{key}.json"


def _tqdm_class(progress: bool):
    if progress:
        return None
    from huggingface_hub.utils import tqdm as hf_tqdm

    class _Silent(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Silent


def _card(readme: str | None) -> dict:
    """Model-card fields lolscan reports: base_model, tags, library_name, license, trained_words."""
    if readme is None:
        return {}
    try:
        from huggingface_hub.repocard import metadata_load

        data = metadata_load(readme) or {}
    except Exception:  # a malformed card must not fail the scan
        return {}
    base = data.get("base_model")
    if isinstance(base, list) and len(base) == 1:
        base = base[0]
    words = data.get("instance_prompt")
    tags = data.get("tags") or []
    out = {
        "base_model": base if isinstance(base, (str, list)) else None,
        "base_model_relation": data.get("base_model_relation"),
        "tags": [str(t) for t in tags] if isinstance(tags, list) else [str(tags)],
        "library_name": data.get("library_name"),
        "license": data.get("license"),
        "pipeline_tag": data.get("pipeline_tag"),
        "trained_words": [str(words)] if isinstance(words, str) and words else [],
    }
    return {k: v for k, v in out.items() if v not in (None, [], "")}


def _hf_error(exc: Exception, ref: HfRef, token: bool, offline: bool) -> InputError:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    shown = ref.uri
    rev = ref.revision or "main"
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)) or offline:
        if offline:
            return InputError(
                f"not in the Hugging Face cache ({hf_cache_dir()}) and offline mode is on; "
                "run once without --offline / HF_HUB_OFFLINE to download it",
                path=shown,
            )
        return InputError(f"cannot reach the Hub at {hf_endpoint()} and no cached copy exists", path=shown)
    if isinstance(exc, GatedRepoError):
        return InputError(
            "gated repository: accept its conditions on its Hub page, then pass a token (HF_TOKEN or --hf-token)",
            path=shown,
        )
    if isinstance(exc, RepositoryNotFoundError):
        if token:
            return InputError(f"repository {ref.repo_id} not found, or the token cannot access it", path=shown)
        return InputError(
            f"repository {ref.repo_id} not found, or it is private and needs a token (HF_TOKEN or --hf-token)",
            path=shown,
        )
    if isinstance(exc, RevisionNotFoundError):
        return InputError(f"revision {rev!r} not found in {ref.repo_id}", path=shown)
    if isinstance(exc, EntryNotFoundError):
        return InputError(f"{ref.path or 'file'} not found in {ref.repo_id} at revision {rev!r}", path=shown)
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            need = "the token was rejected or lacks access" if token else "a token is needed (HF_TOKEN or --hf-token)"
            return InputError(f"the Hub refused access ({status}): {need}", path=shown)
        return InputError(f"the Hub answered HTTP {status}", path=shown)
    net = _net_errors()
    if isinstance(exc, net["interrupted"]):
        return InputError(
            f"download interrupted: the connection closed before the whole file arrived ({type(exc).__name__}); "
            "nothing was cached",
            path=shown,
        )
    if isinstance(exc, net["any"]):
        return InputError(f"cannot reach the Hub at {hf_endpoint()} ({type(exc).__name__})", path=shown)
    if isinstance(exc, ValueError):
        return InputError(f"invalid Hugging Face reference ({type(exc).__name__})", path=shown)
    return InputError(f"cannot download from the Hub ({type(exc).__name__})", path=shown)


def _hf_exceptions() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled

    return (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled, *_net_errors()["any"], ValueError, FileNotFoundError)


def _net_errors() -> dict[str, tuple[type[BaseException], ...]]:
    """huggingface_hub's HTTP client exceptions: httpx2 (2.x, tested), httpx (1.x) or requests (0.x)."""
    out: dict[str, tuple[type[BaseException], ...]] = {"any": (), "transport": (ConnectionError,), "interrupted": ()}
    for name in ("httpx2", "httpx"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        out["any"] += (mod.HTTPError,)
        out["transport"] += (mod.TransportError,)
        out["interrupted"] += (mod.RemoteProtocolError, mod.ReadError)
    try:
        import requests

        out["any"] += (requests.RequestException,)
        out["transport"] += (requests.ConnectionError, requests.Timeout)
        out["interrupted"] += (requests.exceptions.ChunkedEncodingError,)
    except ImportError:
        pass
    return out


def _from_record(record: dict, ref: HfRef, **kw) -> Resolved:
    """Materialise a recorded plan from the Hugging Face cache only (`local_files_only=True`)."""
    from huggingface_hub import hf_hub_download

    commit = record["commit"]
    paths = [hf_hub_download(ref.repo_id, f, revision=commit, local_files_only=True, **kw) for f in record["files"]]
    return _result(ref, record, paths)


def _result(ref: HfRef, record: dict, paths: list[str]) -> Resolved:
    commit, target = record["commit"], record["target"]
    if record["kind"] == "peft":
        local = Path(paths[0]).parent
    else:
        local = Path(paths[0])
    uri = f"hf://{ref.repo_id}@{commit}" + (f"/{target}" if target else "")
    meta = {
        "source": "huggingface",
        "repo_id": ref.repo_id,
        "name": ref.repo_id,
        "revision": ref.revision or "main",
        "commit": commit,
        "path": target,
        "files": list(record["files"]),
        **record.get("card", {}),
    }
    return Resolved(path=local, uri=uri, metadata=meta)


def _verify_blob(path: Path, ref: HfRef) -> None:
    """Check a freshly cached file against its LFS ETag (its SHA-256); drop it from the cache if it differs.

    huggingface_hub checks the size of a download but not its hash. Files stored in plain git
    (ETag = git blob sha1, 40 hex) are left to huggingface_hub's size check.
    """
    blob = path.resolve()
    expected = blob.name.lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        return
    actual = sha256_file(blob)
    if actual != expected:
        for p in (path, blob):
            with contextlib.suppress(OSError):
                p.unlink()
        raise InputError(
            f"SHA-256 mismatch for {path.name}: the Hub publishes {expected[:16]}…, the download is {actual[:16]}…; "
            "removed it from the cache",
            path=ref.uri,
        )


def _offline_guess(ref: HfRef, errors: tuple, **kw) -> Resolved | None:
    """Without a lolscan record: the named file, or a PEFT pair in the named folder, if the HF cache has it."""
    from huggingface_hub import hf_hub_download

    folder = ref.path or ""
    prefix = f"{folder}/" if folder else ""
    tries: list[tuple[str, list[str]]] = [("peft", [prefix + PEFT_CONFIG, prefix + PEFT_WEIGHTS[0]])]
    if ref.path is not None:
        tries.insert(0, ("file", [ref.path]))
    for kind, files in tries:
        try:
            paths = [hf_hub_download(ref.repo_id, f, revision=ref.revision, local_files_only=True, **kw) for f in files]
        except errors:
            continue
        commit = Path(paths[0]).parents[files[0].count("/")].name  # <cache>/snapshots/<commit>/<path>
        return _result(ref, {"commit": commit, "kind": kind, "files": files, "target": files[0] if kind == "file" else folder}, paths)
    return None


def resolve_hf(ref: HfRef, *, offline: bool, token: str | None, progress: bool) -> Resolved:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    offline = _offline_requested(offline)
    endpoint = hf_endpoint()
    kw = {"cache_dir": str(hf_cache_dir()), "endpoint": endpoint, "token": token or None}
    errors = _hf_exceptions()
    has_token = bool(token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    record_path = _record_path(ref)
    record = read_json(record_path)
    if record and (offline or is_commit_sha(ref.revision)):
        try:
            return _from_record(record, ref, **kw)
        except errors:
            if offline:
                raise _hf_error(FileNotFoundError(), ref, has_token, offline) from None
    if offline:
        if record is None:  # not resolved by lolscan before: an explicit file or a PEFT pair may be cached anyway
            hit = _offline_guess(ref, errors, **kw)
            if hit is not None:
                return hit
        raise _hf_error(FileNotFoundError(), ref, has_token, offline)

    tqdm_class = _tqdm_class(progress)
    try:
        info = HfApi(endpoint=endpoint, token=token or None).model_info(ref.repo_id, revision=ref.revision)
        commit = info.sha
        siblings = [s.rfilename for s in info.siblings or []]
        if not commit:
            raise InputError("the Hub did not say which commit this revision is", path=ref.uri)
        plan = plan_files(siblings, ref.path, ref.uri)
        if plan.kind == "peft":
            folder = snapshot_download(
                ref.repo_id, revision=commit, allow_patterns=list(plan.files), tqdm_class=tqdm_class, **kw
            )
            paths = [str(Path(folder) / f) for f in plan.files]
            missing = [f for f in plan.files if not Path(folder, f).is_file()]
            if missing:
                raise InputError(f"the Hub did not deliver {', '.join(missing)}", path=ref.uri)
        else:
            paths = [hf_hub_download(ref.repo_id, plan.files[0], revision=commit, tqdm_class=tqdm_class, **kw)]
    except errors as exc:
        if record and isinstance(exc, _net_errors()["transport"]):
            # The Hub is unreachable: serve the copy resolved last time, as huggingface_hub itself does.
            try:
                return _from_record(record, ref, **kw)
            except errors:
                pass
        raise _hf_error(exc, ref, has_token, False) from None
    verified = read_json(_record_path(HfRef(ref.repo_id, commit, plan.target or None)))
    if not (verified and verified.get("files") == list(plan.files)):
        for path in paths:
            _verify_blob(Path(path), ref)
    readme = None
    if "README.md" in siblings:
        try:
            readme = hf_hub_download(ref.repo_id, "README.md", revision=commit, tqdm_class=_tqdm_class(False), **kw)
        except errors:
            readme = None  # the card is optional
    record = {
        "repo_id": ref.repo_id,
        "revision": ref.revision or "main",
        "commit": commit,
        "kind": plan.kind,
        "files": list(plan.files),
        "target": plan.target,
        "card": _card(readme),
    }
    write_json_atomic(record_path, record)
    # The same answer under the commit and under the canonical URI, so those need no network next time.
    for path in {ref.path, plan.target or None}:
        write_json_atomic(_record_path(HfRef(ref.repo_id, commit, path)), {**record, "revision": commit})
    return _result(ref, record, paths)
