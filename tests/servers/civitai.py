"""A minimal Civitai REST API plus a separate "signed storage" server (docs/FORMATS.md §10).

`GET /api/v1/models/{id}`, `/api/v1/model-versions/{id}`, `/api/v1/model-versions/by-hash/{hash}`
and `/api/download/models/{versionId}?type=&format=` (302 to `MockStorage` when one is attached,
else the bytes directly). Knobs for failure tests: per-version token requirement (401), early
access (403), archived (410), a number of 429s before success, a truncated body, a wrong
published SHA-256.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .base import MockServer, Request, Response


def file_hashes(data: bytes) -> dict[str, str]:
    sha = hashlib.sha256(data).hexdigest().upper()
    return {"SHA256": sha, "AutoV2": sha[:10], "CRC32": f"{zlib.crc32(data):08X}"}


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})})


class MockStorage(MockServer):
    """Serves signed blobs at `/blob/<key>?sig=…`; reached through a `localhost` URL (another host name)."""

    def __init__(self) -> None:
        super().__init__()
        self.blobs: dict[str, bytes] = {}
        self.rate_limit: int = 0

    def sign(self, data: bytes, name: str) -> str:
        key = secrets.token_hex(8)
        self.blobs[key] = data
        return f"http://localhost:{self.port}/blob/{key}?sig={secrets.token_hex(8)}&name={name}"

    def handle(self, req: Request) -> Response:
        if self.rate_limit > 0:
            self.rate_limit -= 1
            return _json(429, {"error": "Too Many Requests"})
        parts = req.parts
        if len(parts) == 2 and parts[0] == "blob" and parts[1] in self.blobs:
            return Response(200, self.blobs[parts[1]], {"Content-Type": "application/octet-stream"})
        return _json(404, {"error": "NoSuchKey"})


@dataclass
class _Version:
    record: dict
    model_id: int
    blobs: dict[int, bytes]  # file id -> bytes
    token: str | None = None
    early_access: bool = False
    archived: bool = False
    truncate: bool = False


@dataclass
class _Model:
    record: dict
    version_ids: list[int] = field(default_factory=list)  # newest first


class MockCivitai(MockServer):
    def __init__(self, storage: MockStorage | None = None) -> None:
        super().__init__()
        self.storage = storage
        self.models: dict[int, _Model] = {}
        self.versions: dict[int, _Version] = {}
        self.rate_limit: dict[str, int] = {}  # path prefix -> number of 429s still to send
        self.retry_after: str | None = None

    def add_lora(
        self,
        model_id: int,
        version_id: int,
        files: list[tuple[int, str, bytes | Path]] | tuple[int, str, bytes | Path],
        *,
        model_name: str = "Test LoRA",
        version_name: str = "v1.0",
        base_model: str = "SD 1.5",
        trained_words: tuple[str, ...] = (),
        tags: tuple[str, ...] = (),
        model_type: str = "LORA",
        file_format: str = "SafeTensor",
        wrong_sha256: bool = False,
        token: str | None = None,
        early_access: bool = False,
        archived: bool = False,
        truncate: bool = False,
    ) -> dict:
        """Publish a version (newest of its model) with `files` = [(fileId, name, content)]; return its JSON."""
        if isinstance(files, tuple):
            files = [files]
        blobs: dict[int, bytes] = {}
        file_records = []
        for i, (fid, name, content) in enumerate(files):
            data = content.read_bytes() if isinstance(content, Path) else content
            blobs[fid] = data
            hashes = file_hashes(data)
            if wrong_sha256:
                hashes["SHA256"] = hashlib.sha256(data + b"tampered").hexdigest().upper()
            fmt = file_format if name.endswith(".safetensors") else "PickleTensor"
            file_records.append(
                {
                    "id": fid,
                    "name": name,
                    "type": "Model",
                    "sizeKB": len(data) / 1024,
                    "metadata": {"format": fmt, "size": "full", "fp": "fp16" if i else "fp32"},
                    "pickleScanResult": "Success",
                    "virusScanResult": "Success",
                    "hashes": hashes,
                    "primary": i == 0,
                    "downloadUrl": f"https://civitai.com/api/download/models/{version_id}?type=Model&format={fmt}"
                    + ("&fp=fp16" if i else ""),
                }
            )
        eco = {"SD 1.5": "sd1", "SDXL 1.0": "sdxl"}.get(base_model, "other")
        version = {
            "id": version_id,
            "modelId": model_id,
            "name": version_name,
            "baseModel": base_model,
            "baseModelType": "Standard",
            "trainedWords": list(trained_words),
            "air": f"urn:air:{eco}:{model_type.lower()}:civitai:{model_id}@{version_id}",
            "status": "Published",
            "availability": "EarlyAccess" if early_access else "Public",
            "downloadUrl": f"https://civitai.com/api/download/models/{version_id}",
            "model": {"name": model_name, "type": model_type, "nsfw": False, "poi": False},
            "files": file_records,
        }
        self.versions[version_id] = _Version(version, model_id, blobs, token, early_access, archived, truncate)
        model = self.models.setdefault(
            model_id,
            _Model({"id": model_id, "name": model_name, "type": model_type, "nsfw": False,
                    "tags": list(tags), "creator": {"username": "tester"}}),
        )
        model.version_ids.insert(0, version_id)
        return version

    # -- request routing -------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        for prefix, left in self.rate_limit.items():
            if left > 0 and req.path.startswith(prefix):
                self.rate_limit[prefix] = left - 1
                extra = {"Retry-After": self.retry_after} if self.retry_after else {}
                return _json(429, {"error": "Too Many Requests", "message": "unusual amount of downloading"}, extra)
        p = req.parts
        if p[:3] == ["api", "v1", "models"] and len(p) == 4 and p[3].isdigit():
            return self._model(int(p[3]))
        if p[:4] == ["api", "v1", "model-versions", "by-hash"] and len(p) == 5:
            return self._by_hash(p[4])
        if p[:3] == ["api", "v1", "model-versions"] and len(p) == 4 and p[3].isdigit():
            v = self.versions.get(int(p[3]))
            return _json(200, v.record) if v else _json(404, {"error": f"No model version with id {p[3]}"})
        if p[:3] == ["api", "download", "models"] and len(p) == 4 and p[3].isdigit():
            return self._download(req, int(p[3]))
        return _json(404, {"error": "Not found"})

    def _model(self, mid: int) -> Response:
        m = self.models.get(mid)
        if m is None:
            return _json(404, {"error": f"No model with id {mid}"})
        nested = []
        for vid in m.version_ids:
            v = dict(self.versions[vid].record)
            v.pop("model", None)
            v.pop("modelId", None)
            nested.append(v)
        return _json(200, {**m.record, "modelVersions": nested})

    def _by_hash(self, digest: str) -> Response:
        for v in self.versions.values():
            for f in v.record["files"]:
                if digest.upper() in {h.upper() for h in f["hashes"].values()}:
                    return _json(200, v.record)
        return _json(404, {"error": "Model not found"})

    def _download(self, req: Request, vid: int) -> Response:
        v = self.versions.get(vid)
        if v is None:
            return _json(404, {"error": "File not found"})
        if v.archived:
            return _json(410, {"error": "Model archived, not available for download"})
        if v.token is not None and req.headers.get("authorization") != f"Bearer {v.token}":
            return _json(401, {"error": "Unauthorized", "message": "The creator of this asset requires you to be logged in to download it"})
        if v.early_access:
            return _json(403, {"error": "Early Access", "deadline": "2099-01-01T00:00:00Z"})
        q = {k: vals[0] for k, vals in req.query.items()}
        chosen = None
        for f in v.record["files"]:
            meta = f["metadata"]
            if ("type" in q and q["type"] != f["type"]) or ("format" in q and q["format"] != meta["format"]):
                continue
            if "fp" in q and q["fp"] != meta["fp"]:
                continue
            if chosen is None or f["primary"]:
                chosen = f
        if chosen is None:
            return _json(404, {"error": "File not found"})
        data = v.blobs[chosen["id"]]
        if self.storage is not None:
            return Response(302, b"", {"Location": self.storage.sign(data, chosen["name"])})
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Disposition": f'attachment; filename="{chosen["name"]}"'}
        if v.truncate:
            return Response(200, data, headers, truncate_to=len(data) // 2)
        return Response(200, data, headers)
