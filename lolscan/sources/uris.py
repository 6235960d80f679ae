"""Parsing of remote LoRA references: `hf://`, Hugging Face URLs, `civitai:`, Civitai URLs and AIR.

Parsing never touches the network. Every reference has a canonical, token-free `uri` used in
messages and reports. A token pasted inside a Civitai URL (`?token=`) is lifted out of the URI
into `CivitaiRef.token` and never appears in `uri` or in `repr()`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import InputError

HF_HOSTS = {"huggingface.co", "www.huggingface.co", "hf.co"}
CIVITAI_HOSTS = {"civitai.com", "www.civitai.com", "civitai.green", "civitai.red"}
DEFAULT_CIVITAI_ENDPOINT = "https://civitai.com"

_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HASH = re.compile(r"^[0-9A-Fa-f]{8,64}$")
# docs/FORMATS.md §10 (AIR strings), with the `urn:`/`air:` prefix required so plain paths never match.
_AIR = re.compile(
    r"^(?:urn:)?air:(?:(?P<eco>[\w.-]+):)?(?:(?P<type>[\w-]+):)?(?P<source>[\w-]+):(?P<id>[^@+.*]+)"
    r"(?:@(?P<version>[^+.*]+))?(?:\+(?P<file>[^.*]+))?(?:\.(?P<format>[^*]+))?(?:\*(?P<strength>.*))?$",
    re.IGNORECASE,
)
_NOT_LORA_AIR_TYPES = {"checkpoint", "embed", "embedding", "vae", "controlnet", "upscaler", "diffusionmodel"}
_REMOTE_PREFIXES = ("hf://", "civitai:", "urn:air:", "air:", "http://", "https://")


def is_commit_sha(revision: str | None) -> bool:
    return revision is not None and bool(_COMMIT.match(revision))


@dataclass(frozen=True)
class HfRef:
    """A Hugging Face model repo, optionally pinned to a revision and narrowed to a path inside it."""

    repo_id: str
    revision: str | None = None  # branch, tag or 40-hex commit; None = the default branch
    path: str | None = None  # a file, or a folder holding a PEFT adapter; None = let the resolver pick

    @property
    def uri(self) -> str:
        rev = "" if self.revision is None else "@" + self.revision.replace("/", "%2F")
        return f"hf://{self.repo_id}{rev}" + (f"/{self.path}" if self.path else "")


@dataclass(frozen=True)
class CivitaiRef:
    """A Civitai model version (by id), a model (latest version), or a file hash."""

    version_id: int | None = None
    model_id: int | None = None
    file_hash: str | None = None  # upper-case hex: SHA256, AutoV2, AutoV1, AutoV3, CRC32 or BLAKE3
    file_id: int | None = None
    file_type: str | None = None  # download-route selectors (`?type=&format=&size=&fp=`)
    file_format: str | None = None
    file_size: str | None = None
    file_fp: str | None = None
    token: str | None = field(default=None, repr=False, compare=False)  # lifted out of a pasted URL

    @property
    def uri(self) -> str:
        if self.version_id is not None:
            return f"civitai:{self.version_id}" + (f"+{self.file_id}" if self.file_id is not None else "")
        if self.file_hash is not None:
            return f"civitai:hash:{self.file_hash}"
        return f"civitai:model/{self.model_id}"


Ref = HfRef | CivitaiRef


def is_remote(target: str) -> bool:
    """True when `target` names a remote LoRA (or any URL) rather than a local path."""
    if not isinstance(target, str):
        return False
    low = target.strip().lower()
    return low.startswith(_REMOTE_PREFIXES)


def parse(target: str) -> Ref:
    """Parse a remote reference; raise `InputError` (naming the input) when it is malformed."""
    text = target.strip()
    low = text.lower()
    if low.startswith("hf://"):
        return _parse_hf_path(text[5:], text)
    if low.startswith("civitai:"):
        return _parse_civitai_scheme(text[8:], text)
    if low.startswith(("urn:air:", "air:")):
        return _parse_air(text)
    if low.startswith(("http://", "https://")):
        return _parse_url(text)
    raise InputError("not a remote LoRA reference (expected hf://, civitai:, urn:air: or a URL)", path=_safe(text))


# -- Hugging Face -------------------------------------------------------------------------------


def _check_repo(owner: str, name: str, shown: str) -> str:
    if owner.lower() in {"datasets", "spaces", "buckets"}:
        raise InputError("only Hugging Face model repositories are supported", path=shown)
    if not (_REPO_PART.match(owner) and _REPO_PART.match(name)) or ".." in owner + name:
        raise InputError("expected a repository id of the form owner/name", path=shown)
    return f"{owner}/{name}"


def _clean_path(path: str, shown: str) -> str | None:
    path = path.strip("/")
    if not path:
        return None
    if any(p in {"", ".", ".."} for p in path.split("/")):
        raise InputError("invalid path inside the repository", path=shown)
    return path


def _parse_hf_path(rest: str, shown: str) -> HfRef:
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    parts = rest.strip("/").split("/")
    if len(parts) < 2 or not parts[1]:
        raise InputError("expected hf://owner/repo[@revision][/path/in/repo]", path=shown)
    owner, name = parts[0], parts[1]
    revision = None
    if "@" in name:
        name, revision = name.split("@", 1)
        revision = unquote(revision)
        if not revision:
            raise InputError("empty revision after '@'", path=shown)
    repo_id = _check_repo(owner, name, shown)
    return HfRef(repo_id, revision, _clean_path("/".join(parts[2:]), shown))


def _parse_hf_url(parts: list[str], shown: str) -> HfRef:
    if parts and parts[0] in {"models"}:  # https://huggingface.co/models/owner/name is not a thing; be strict
        raise InputError("not a Hugging Face model URL", path=shown)
    if len(parts) < 2:
        raise InputError("expected https://huggingface.co/owner/repo[/blob|resolve|tree/<revision>/<path>]", path=shown)
    repo_id = _check_repo(parts[0], parts[1], shown)
    rest = parts[2:]
    if not rest:
        return HfRef(repo_id)
    if rest[0] in {"blob", "resolve", "tree"} and len(rest) >= 2:
        revision = unquote(rest[1])
        path = _clean_path("/".join(unquote(p) for p in rest[2:]), shown)
        if rest[0] != "tree" and path is None:
            raise InputError(f"a /{rest[0]}/ URL must name a file", path=shown)
        return HfRef(repo_id, revision, path)
    raise InputError("not a Hugging Face model, file or folder URL", path=shown)


# -- Civitai ------------------------------------------------------------------------------------


def _int(value: str, what: str, shown: str) -> int:
    value = value.strip()
    if not value.isdigit() or len(value) > 18:
        raise InputError(f"expected a numeric Civitai {what}, got {value!r}", path=shown)
    return int(value)


def _parse_civitai_scheme(rest: str, shown: str) -> CivitaiRef:
    low = rest.lower()
    if low.startswith("hash:"):
        digest = rest[5:].strip()
        if not _HASH.match(digest):
            raise InputError("expected civitai:hash:<SHA256, AutoV2 or other hex file hash>", path=shown)
        return CivitaiRef(file_hash=digest.upper())
    for prefix in ("models/", "model/"):
        if low.startswith(prefix):
            body = rest[len(prefix):]
            if "@" in body:
                mid, vid = body.split("@", 1)
                return CivitaiRef(version_id=_int(vid, "version id", shown), model_id=_int(mid, "model id", shown))
            return CivitaiRef(model_id=_int(body, "model id", shown))
    for prefix in ("versions/", "version/", "model-versions/"):
        if low.startswith(prefix):
            rest = rest[len(prefix):]
            break
    file_id = None
    if "+" in rest:
        rest, fid = rest.split("+", 1)
        file_id = _int(fid, "file id", shown)
    if "@" in rest:  # <modelId>@<versionId>, as civitai_comfy_nodes writes it
        mid, vid = rest.split("@", 1)
        return CivitaiRef(version_id=_int(vid, "version id", shown), model_id=_int(mid, "model id", shown), file_id=file_id)
    return CivitaiRef(version_id=_int(rest, "version id", shown), file_id=file_id)


def _parse_air(text: str) -> CivitaiRef:
    m = _AIR.match(text.strip())
    if not m:
        raise InputError("not a valid AIR (urn:air:<ecosystem>:<type>:civitai:<model>@<version>)", path=text)
    if m["source"].lower() != "civitai":
        raise InputError(f"AIR source {m['source']!r} is not supported (only civitai)", path=text)
    if m["type"] and m["type"].lower() in _NOT_LORA_AIR_TYPES:
        raise InputError(f"this AIR names a {m['type']}, not a LoRA", path=text)
    mid = _int(m["id"], "model id", text)
    fid = _int(m["file"], "file id", text) if m["file"] else None
    if m["version"]:
        return CivitaiRef(version_id=_int(m["version"], "version id", text), model_id=mid, file_id=fid)
    return CivitaiRef(model_id=mid)


def civitai_endpoint() -> str:
    """The Civitai base URL, read at call time (LOLSCAN_CIVITAI_ENDPOINT, default https://civitai.com)."""
    return (os.environ.get("LOLSCAN_CIVITAI_ENDPOINT") or DEFAULT_CIVITAI_ENDPOINT).rstrip("/")


def hf_endpoint() -> str:
    """The Hub base URL, read at call time (HF_ENDPOINT, default https://huggingface.co)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _host(url: str) -> str:
    return (urlsplit(url).netloc or "").lower()


def _one(query: dict[str, list[str]], key: str) -> str | None:
    vals = query.get(key)
    return vals[0] if vals else None


def _parse_civitai_url(parts: list[str], query: dict[str, list[str]], shown: str) -> CivitaiRef:
    token = _one(query, "token")
    vid_q = _one(query, "modelVersionId")
    if len(parts) >= 2 and parts[0] == "models":
        mid = _int(parts[1], "model id", shown)
        if vid_q:
            return CivitaiRef(version_id=_int(vid_q, "version id", shown), model_id=mid, token=token)
        return CivitaiRef(model_id=mid, token=token)
    if len(parts) == 2 and parts[0] == "model-versions":
        return CivitaiRef(version_id=_int(parts[1], "version id", shown), token=token)
    if len(parts) == 4 and parts[:3] == ["api", "download", "models"]:
        return CivitaiRef(
            version_id=_int(parts[3], "version id", shown),
            file_type=_one(query, "type"),
            file_format=_one(query, "format"),
            file_size=_one(query, "size"),
            file_fp=_one(query, "fp"),
            token=token,
        )
    if len(parts) >= 4 and parts[:2] == ["api", "v1"]:
        if parts[2] == "models" and len(parts) == 4:
            return CivitaiRef(model_id=_int(parts[3], "model id", shown), token=token)
        if parts[2] == "model-versions" and len(parts) == 5 and parts[3] == "by-hash":
            return _parse_civitai_scheme("hash:" + parts[4], shown)
        if parts[2] == "model-versions" and len(parts) == 4:
            return CivitaiRef(version_id=_int(parts[3], "version id", shown), token=token)
    raise InputError("not a Civitai model, model-version or download URL", path=shown)


def _safe(url: str) -> str:
    """The URL with any `token=` query value masked, for messages."""
    return re.sub(r"(?i)([?&]token=)[^&#]*", r"\1***", url)


def _parse_url(text: str) -> Ref:
    shown = _safe(text)
    split = urlsplit(text)
    host = (split.hostname or "").lower()
    parts = [p for p in split.path.split("/") if p]
    query = parse_qs(split.query)
    netloc = split.netloc.lower()
    if netloc == _host(civitai_endpoint()) or (host in CIVITAI_HOSTS and netloc != _host(hf_endpoint())):
        return _parse_civitai_url(parts, query, shown)
    if netloc == _host(hf_endpoint()) or host in HF_HOSTS:
        return _parse_hf_url(parts, shown)
    raise InputError("only huggingface.co and civitai.com URLs are supported", path=shown)
