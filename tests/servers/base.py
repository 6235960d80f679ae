"""A threaded loopback HTTP server that records every request it answers."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str  # undecoded path
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    host: str = ""

    @property
    def parts(self) -> list[str]:
        return [unquote(p) for p in self.path.strip("/").split("/")] if self.path.strip("/") else []


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    truncate_to: int | None = None  # send Content-Length of the full body but only this many bytes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def _serve(self) -> None:
        split = urlsplit(self.path)
        req = Request(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            host=self.headers.get("Host", ""),
        )
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        mock = self.server.mock
        with mock.lock:
            mock.requests.append(req)
        resp = mock.handle(req)
        self.send_response(resp.status)
        headers = dict(resp.headers)
        headers.setdefault("Content-Length", str(len(resp.body)))
        for k, v in headers.items():
            self.send_header(k, v)
        # One request per connection, so a stopped server is really unreachable (no live keep-alive sockets).
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            body = resp.body if resp.truncate_to is None else resp.body[: resp.truncate_to]
            self.wfile.write(body)
            self.wfile.flush()

    do_GET = _serve
    do_HEAD = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mock: "MockServer"


class MockServer:
    """Subclasses implement `handle(request) -> Response`. Use as a context manager."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def handle(self, req: Request) -> Response:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MockServer":
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.mock = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
