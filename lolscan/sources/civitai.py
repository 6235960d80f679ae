"""Resolve `civitai:` references through Civitai's public REST API into verified cached files.

Cache layout under `cache_root()/civitai/`:
  `<versionId>/version.json`   the version's API record (+ the model's tags/creator) and, per file
                               id, the verified size and SHA-256 of what is on disk;
  `<versionId>/<file name>`    the LoRA itself, only ever created by a verified atomic rename;
  `refs/model-<id>.json`, `refs/hash-<HASH>.json`   which version a model (last seen latest) or a
                               file hash resolved to, so offline mode can answer them.
A pinned request (version id or hash) whose file is cached is answered without any network.
The token is only sent as an `Authorization` header to the configured origin; it never appears
in a URL, a message, the metadata or the cache.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..errors import InputError
from . import Resolved
from ..utils.files import sha256_file
from .cache import cache_root, entry_lock, read_json, safe_name, store_verified, write_json_atomic
from .http import HttpConnectionError, HttpStatusError, open_url, origin
from .uris import CivitaiRef, civitai_endpoint

LORA_MODEL_TYPES = {"lora", "locon", "dora", "lycoris"}
MODEL_FILE_TYPES = {"model", "pruned model"}


class CivitaiUnreachable(InputError):
    """Civitai could not be reached at all (as opposed to answering with an error)."""


class _Api:
    def __init__(self, ref: CivitaiRef, token: str | None):
        self.ref = ref
        self.base = civitai_endpoint()
        self.token = token
        self.auth_origin = origin(self.base)

    def error(self, exc: Exception, what: str) -> InputError:
        uri = self.ref.uri
        if isinstance(exc, HttpConnectionError):
            return CivitaiUnreachable(f"cannot reach Civitai at {self.base} ({exc})", path=uri)
        assert isinstance(exc, HttpStatusError)
        said = f" (Civitai: {exc.message})" if exc.message else ""
        if exc.status == 401:
            if self.token:
                return InputError(f"Civitai rejected the token for {what} (401){said}", path=uri)
            return InputError(
                f"{what} needs a Civitai API token (401): set CIVITAI_TOKEN or pass --civitai-token{said}", path=uri
            )
        if exc.status == 403:
            hint = "the token lacks access" if self.token else "a Civitai API token is needed (CIVITAI_TOKEN or --civitai-token)"
            return InputError(f"access to {what} is forbidden (403): {hint}, or it is in early access{said}", path=uri)
        if exc.status == 404:
            return InputError(f"{what} not found on Civitai (404)", path=uri)
        if exc.status == 410:
            return InputError(f"{what} is archived on Civitai and can no longer be downloaded (410)", path=uri)
        if exc.status == 429:
            return InputError(
                f"Civitai is rate-limiting requests (429) and still was after {exc.retries} retries; try again later",
                path=uri,
            )
        return InputError(f"Civitai answered HTTP {exc.status} for {what}{said}", path=uri)

    def get_json(self, path: str, what: str) -> dict:
        try:
            with contextlib.closing(open_url(self.base + path, token=self.token, auth_origin=self.auth_origin, accept="application/json")) as resp:
                body = resp.read()
        except (HttpStatusError, HttpConnectionError) as exc:
            raise self.error(exc, what) from None
        except OSError as exc:
            raise InputError(f"connection to Civitai broke while reading {what} ({type(exc).__name__})", path=self.ref.uri) from None
        try:
            data = json.loads(body)
        except ValueError:
            raise InputError(f"Civitai returned invalid JSON for {what}", path=self.ref.uri) from None
        if not isinstance(data, dict):
            raise InputError(f"Civitai returned unexpected JSON for {what}", path=self.ref.uri)
        return data


def _metadata_paths(vid: int) -> tuple[Path, Path]:
    vdir = cache_root() / "civitai" / str(vid)
    return vdir, vdir / "version.json"


def _ref_path(kind: str, key: str) -> Path:
    return cache_root() / "civitai" / "refs" / f"{kind}-{safe_name(key)}.json"


def _file_format(f: dict) -> str:
    return str((f.get("metadata") or {}).get("format") or "")


def _is_safetensors(f: dict) -> bool:
    return _file_format(f) == "SafeTensor" or str(f.get("name", "")).lower().endswith(".safetensors")


def _describe(f: dict) -> str:
    return f"{f.get('name')} (id {f.get('id')}, {f.get('type')}, {_file_format(f) or 'unknown format'})"


def pick_file(version: dict, ref: CivitaiRef) -> dict:
    """The LoRA's SafeTensor file among `version["files"]`, honouring the reference's selectors."""
    files = [f for f in version.get("files") or [] if isinstance(f, dict)]
    uri = ref.uri
    if ref.file_id is not None:
        for f in files:
            if f.get("id") == ref.file_id:
                if not _is_safetensors(f):
                    raise InputError(f"file {_describe(f)} is not a SafeTensor file; lolscan only downloads .safetensors", path=uri)
                return f
        raise InputError(f"version has no file with id {ref.file_id} (files: {', '.join(map(_describe, files)) or 'none'})", path=uri)
    if ref.file_hash is not None:  # the file the hash names, not necessarily the version's primary one
        h = ref.file_hash
        named = [f for f in files if any(v == h or (k == "SHA256" and len(h) >= 10 and v.startswith(h)) for k, v in _hashes(f).items())]
        if len(named) == 1:
            if not _is_safetensors(named[0]):
                raise InputError(f"the file with this hash, {_describe(named[0])}, is not a SafeTensor file", path=uri)
            return named[0]
    cands = [f for f in files if str(f.get("type") or "Model").lower() in MODEL_FILE_TYPES]
    meta = lambda f, k: str((f.get("metadata") or {}).get(k) or "")  # noqa: E731
    if ref.file_type:
        cands = [f for f in cands if str(f.get("type", "")).lower() == ref.file_type.lower()]
    if ref.file_format:
        cands = [f for f in cands if _file_format(f).lower() == ref.file_format.lower()]
    if ref.file_size:
        cands = [f for f in cands if meta(f, "size").lower() == ref.file_size.lower()]
    if ref.file_fp:
        cands = [f for f in cands if meta(f, "fp").lower() == ref.file_fp.lower()]
    safetensors = [f for f in cands if _is_safetensors(f)]
    if not safetensors:
        listed = ", ".join(map(_describe, files)) or "none"
        raise InputError(f"no SafeTensor LoRA file in this version (files: {listed}); lolscan does not download pickle files", path=uri)
    if len(safetensors) == 1:
        return safetensors[0]
    primary = [f for f in safetensors if f.get("primary")]
    if len(primary) == 1:
        return primary[0]
    listed = ", ".join(map(_describe, safetensors))
    raise InputError(f"several SafeTensor files ({listed}); pick one with civitai:<versionId>+<fileId>", path=uri)


def _download_url(base: str, version: dict, f: dict) -> str:
    """The file's download URL re-rooted on the configured endpoint (the token never goes in it)."""
    url = f.get("downloadUrl") or ""
    split = urlsplit(url)
    if split.path.startswith("/api/download/models/"):
        query = [(k, v) for k, v in parse_qsl(split.query) if k.lower() != "token"]
        return base + split.path + (f"?{urlencode(query)}" if query else "")
    params = {"type": f.get("type") or "Model", "format": _file_format(f) or "SafeTensor"}
    return f"{base}/api/download/models/{version['id']}?{urlencode(params)}"


def _check_lora(version: dict, model: dict | None, uri: str) -> None:
    mtype = (version.get("model") or {}).get("type") or (model or {}).get("type")
    if mtype and str(mtype).lower() not in LORA_MODEL_TYPES:
        raise InputError(f"this Civitai model is a {mtype}, not a LoRA", path=uri)


def _hashes(f: dict) -> dict[str, str]:
    return {str(k).upper(): str(v).upper() for k, v in (f.get("hashes") or {}).items() if v}


def _metadata(base: str, version: dict, model: dict | None, f: dict, sha256: str, size: int) -> dict:
    model = model or {}
    vmodel = version.get("model") or {}
    mid = version.get("modelId") or model.get("id")
    vid = version.get("id")
    tags = model.get("tags") or []
    return {
        "source": "civitai",
        "model_id": mid,
        "version_id": vid,
        "name": model.get("name") or vmodel.get("name"),
        "version": version.get("name"),
        "type": model.get("type") or vmodel.get("type"),
        "base_model": version.get("baseModel"),
        "base_model_type": version.get("baseModelType"),
        "trained_words": list(version.get("trainedWords") or []),
        "tags": [t if isinstance(t, str) else t.get("name") for t in tags],
        "nsfw": model.get("nsfw", vmodel.get("nsfw")),
        "creator": (model.get("creator") or {}).get("username"),
        "air": version.get("air"),
        "file_id": f.get("id"),
        "file_name": f.get("name"),
        "size": size,
        "sha256": sha256,
        "autov2": sha256[:10],
        "url": f"{base}/models/{mid}?modelVersionId={vid}",
    }


def _canonical(version: dict, f: dict) -> str:
    try:
        default = pick_file(version, CivitaiRef(version_id=version["id"]))
    except InputError:
        default = None
    if default is not None and default.get("id") == f.get("id"):
        return f"civitai:{version['id']}"
    return f"civitai:{version['id']}+{f.get('id')}"


def _cached(vid: int, ref: CivitaiRef) -> Resolved | None:
    """The cached answer for version `vid`, or None if its record or verified file is missing."""
    vdir, record_path = _metadata_paths(vid)
    record = read_json(record_path)
    if not record or not isinstance(record.get("version"), dict):
        return None
    version, model = record["version"], record.get("model")
    try:
        f = pick_file(version, ref)
    except InputError:
        return None
    verified = (record.get("verified") or {}).get(str(f.get("id")))
    if not verified:
        return None
    path = vdir / verified["file"]
    try:
        if path.stat().st_size != verified["size"]:
            return None
    except OSError:
        return None
    base = civitai_endpoint()
    meta = _metadata(base, version, model, f, verified["sha256"], verified["size"])
    return Resolved(path=path, uri=_canonical(version, f), metadata=meta)


def _newest_cached(model_id: int) -> int | None:
    """The newest cached version of a model (offline answer for `civitai:model/<id>`)."""
    found = []
    for record_path in (cache_root() / "civitai").glob("*/version.json"):
        version = (read_json(record_path) or {}).get("version") or {}
        if version.get("modelId") == model_id and isinstance(version.get("id"), int):
            found.append(version["id"])
    return max(found, default=None)


def _last_model_version(model_id: int) -> int | None:
    return (read_json(_ref_path("model", str(model_id))) or {}).get("version_id") or _newest_cached(model_id)


def _offline_missing(ref: CivitaiRef) -> InputError:
    where = cache_root() / "civitai"
    return InputError(
        f"not in the lolscan cache ({where}) and offline mode is on; run once without --offline to download it",
        path=ref.uri,
    )


def _fetch_version(api: _Api, ref: CivitaiRef) -> tuple[dict, dict | None]:
    """(version record, model record without its version list)."""
    if ref.version_id is not None:
        version = api.get_json(f"/api/v1/model-versions/{ref.version_id}", f"model version {ref.version_id}")
        model = None
    elif ref.file_hash is not None:
        version = api.get_json(f"/api/v1/model-versions/by-hash/{ref.file_hash}", f"a file with hash {ref.file_hash}")
        model = None
    else:
        model = api.get_json(f"/api/v1/models/{ref.model_id}", f"model {ref.model_id}")
        versions = [v for v in model.get("modelVersions") or [] if isinstance(v, dict)]
        if not versions:
            raise InputError(f"model {ref.model_id} has no published version on Civitai", path=ref.uri)
        version = dict(versions[0])
        version.setdefault("modelId", ref.model_id)
    if not isinstance(version.get("id"), int):
        raise InputError("Civitai returned a model version without an id", path=ref.uri)
    mid = version.get("modelId")
    if model is None and isinstance(mid, int):
        with contextlib.suppress(InputError):  # tags and creator are nice to have, not required
            model = api.get_json(f"/api/v1/models/{mid}", f"model {mid}")
    if model is not None:
        model = {k: v for k, v in model.items() if k != "modelVersions"}
    return version, model


def _local_name(f: dict, vid: int) -> str:
    name = safe_name(str(f.get("name") or f"{vid}.safetensors"))
    return name if name.lower().endswith(".safetensors") else name + ".safetensors"


def _download(api: _Api, version: dict, model: dict | None, f: dict, ref: CivitaiRef, progress: bool) -> Resolved:
    vid = version["id"]
    vdir, record_path = _metadata_paths(vid)
    name = _local_name(f, vid)
    if sum(_local_name(g, vid) == name for g in version.get("files") or [] if isinstance(g, dict)) > 1:
        name = f"{f.get('id')}-{name}"  # two files of the version share a name
    dest = vdir / name
    hashes = _hashes(f)
    expected = hashes.get("SHA256")
    with entry_lock(vdir / "version"):
        record = read_json(record_path) or {}
        verified = dict(record.get("verified") or {})
        entry = verified.get(str(f.get("id")))
        if entry and dest.exists() and dest.stat().st_size == entry["size"] and (not expected or entry["sha256"] == expected):
            sha, size = entry["sha256"], entry["size"]
        elif dest.exists() and expected and sha256_file(dest).upper() == expected:  # renamed in, record not yet written
            sha, size = expected, dest.stat().st_size
        else:
            with contextlib.suppress(OSError):
                dest.unlink()
            url = _download_url(api.base, version, f)
            try:
                resp = open_url(url, token=api.token, auth_origin=api.auth_origin)
            except (HttpStatusError, HttpConnectionError) as exc:
                raise api.error(exc, f"the file of model version {vid}") from None
            with contextlib.closing(resp):
                length = resp.headers.get("Content-Length")
                sha, size = store_verified(
                    dest,
                    resp.read,
                    uri=ref.uri,
                    declared_size=int(length) if length and length.isdigit() else None,
                    expected_sha256=expected,
                    expected_prefix=None if expected else hashes.get("AUTOV2"),
                    progress=progress,
                )
        verified[str(f.get("id"))] = {"file": name, "size": size, "sha256": sha}
        write_json_atomic(record_path, {"version": version, "model": model, "verified": verified})
    meta = _metadata(api.base, version, model, f, sha, size)
    return Resolved(path=dest, uri=_canonical(version, f), metadata=meta)


def resolve_civitai(ref: CivitaiRef, *, offline: bool, token: str | None, progress: bool) -> Resolved:
    token = token or ref.token or os.environ.get("CIVITAI_TOKEN") or None
    # Pinned answers (a version id, or a hash seen before) never need the network once cached.
    vid = ref.version_id
    if vid is None and ref.file_hash is not None:
        vid = (read_json(_ref_path("hash", ref.file_hash)) or {}).get("version_id")
    if vid is None and offline and ref.model_id is not None:
        vid = _last_model_version(ref.model_id)
    if vid is not None:
        hit = _cached(vid, ref)
        if hit is not None:
            return hit
    if offline:
        raise _offline_missing(ref)

    api = _Api(ref, token)
    try:
        version, model = _fetch_version(api, ref)
    except CivitaiUnreachable:
        # Civitai unreachable: a model reference falls back to the version it resolved to last time.
        last = _last_model_version(ref.model_id) if ref.version_id is None and ref.model_id is not None else None
        hit = _cached(last, ref) if last is not None else None
        if hit is None:
            raise
        return hit
    if ref.version_id is not None and version["id"] != ref.version_id:
        raise InputError(f"Civitai answered with version {version['id']}", path=ref.uri)
    _check_lora(version, model, ref.uri)
    f = pick_file(version, ref)
    result = _download(api, version, model, f, ref, progress)
    if ref.file_hash is not None:
        write_json_atomic(_ref_path("hash", ref.file_hash), {"version_id": version["id"]})
    if ref.version_id is None and ref.file_hash is None:
        write_json_atomic(_ref_path("model", str(ref.model_id)), {"version_id": version["id"]})
    return result
