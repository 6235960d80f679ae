"""A minimal Hugging Face Hub: the endpoints huggingface_hub 2.4 calls for downloads.

`HEAD/GET /{repo}/resolve/{rev}/{path}`, `GET /api/models/{repo}/revision/{rev}` and
`GET /api/models/{repo}/tree/{rev}` (docs/FORMATS.md §10). Private repos answer 401 and gated
ones 403 unless `Authorization: Bearer <token>` matches, like the real Hub.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .base import MockServer, Request, Response


@dataclass
class HubRepo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: content}
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> sha
    token: str | None = None
    gated: bool = False


def _error(status: int, code: str, message: str) -> Response:
    body = json.dumps({"error": message}).encode()
    return Response(status, body, {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message})


class MockHub(MockServer):
    def __init__(self) -> None:
        super().__init__()
        self.repos: dict[str, HubRepo] = {}
        self.tamper: set[str] = set()  # "repo/path": serve one flipped byte (size and ETag unchanged)
        self.truncate: set[str] = set()  # "repo/path": announce the full size, send half, close

    def add_commit(
        self,
        repo_id: str,
        files: dict[str, bytes | Path],
        *,
        branch: str = "main",
        token: str | None = None,
        gated: bool = False,
    ) -> str:
        """Add a commit holding exactly `files`; point `branch` at it; return its 40-hex sha."""
        repo = self.repos.setdefault(repo_id, HubRepo())
        if token is not None:
            repo.token = token
        repo.gated = repo.gated or gated
        content = {p: (v.read_bytes() if isinstance(v, Path) else v) for p, v in files.items()}
        digest = hashlib.sha1(repo_id.encode())
        for p in sorted(content):
            digest.update(p.encode() + b"\0" + hashlib.sha256(content[p]).digest())
        digest.update(str(len(repo.commits)).encode())
        sha = digest.hexdigest()
        repo.commits[sha] = content
        repo.refs[branch] = sha
        return sha

    # -- request routing -------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        parts = req.parts
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id = "/".join(parts[2:4])
            kind, rest = (parts[4], parts[5:]) if len(parts) > 4 else ("revision", [])
            return self._api(req, repo_id, kind, rest)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(req, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        return _error(404, "NotFound", "no such route")

    def _repo(self, req: Request, repo_id: str) -> HubRepo | Response:
        repo = self.repos.get(repo_id)
        if repo is None:
            return _error(401, "RepoNotFound", "Repository not found")
        if repo.token is not None and req.headers.get("authorization") != f"Bearer {repo.token}":
            if repo.gated:
                return _error(403, "GatedRepo", "Access to this repo is restricted")
            return _error(401, "RepoNotFound", "Repository not found")
        return repo

    @staticmethod
    def _commit(repo: HubRepo, rev: str) -> str | None:
        if rev in repo.commits:
            return rev
        return repo.refs.get(rev)

    def _api(self, req: Request, repo_id: str, kind: str, rest: list[str]) -> Response:
        repo = self._repo(req, repo_id)
        if isinstance(repo, Response):
            return repo
        rev = rest[0] if rest else "main"
        sha = self._commit(repo, rev)
        if sha is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        files = repo.commits[sha]
        if kind == "revision":
            body = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "private": repo.token is not None,
                "gated": "manual" if repo.gated else False,
                "siblings": [{"rfilename": p} for p in sorted(files)],
            }
            return Response(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        if kind == "tree":
            prefix = "/".join(rest[1:])
            entries = [
                {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                for p, b in sorted(files.items())
                if not prefix or p.startswith(prefix + "/")
            ]
            return Response(200, json.dumps(entries).encode(), {"Content-Type": "application/json"})
        return _error(404, "NotFound", "no such route")

    def _resolve(self, req: Request, repo_id: str, rev: str, path: str) -> Response:
        repo = self._repo(req, repo_id)
        if isinstance(repo, Response):
            return repo
        sha = self._commit(repo, rev)
        if sha is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        body = repo.commits[sha].get(path)
        if body is None:
            return _error(404, "EntryNotFound", f"{path} does not exist at {rev}")
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{hashlib.sha256(body).hexdigest()}"',  # an LFS file's ETag is its SHA-256
            "Content-Type": "application/octet-stream",
        }
        key = f"{repo_id}/{path}"
        if key in self.tamper:
            body = body[:-1] + bytes([body[-1] ^ 1])
        return Response(200, body, headers, truncate_to=len(body) // 2 if key in self.truncate else None)

    # -- helpers for assertions ------------------------------------------------------------
    def downloads(self) -> list[str]:
        """Paths of the file bodies actually sent (GET on resolve)."""
        return [r.path for r in self.requests if r.method == "GET" and "/resolve/" in r.path]
