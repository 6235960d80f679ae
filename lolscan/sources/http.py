"""A small standard-library HTTP GET for the Civitai source.

Redirects are followed by hand so the bearer token is only ever sent to the configured origin
(never to a signed-storage host), https is never downgraded to http, 429 and 502/503/504 are
retried with bounded exponential back-off, and no URL or header is ever put into an error.
The back-off base is `LOLSCAN_CIVITAI_BACKOFF` seconds (default 1; tests set it near 0).
"""
from __future__ import annotations

import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urljoin, urlsplit

from .._version import __version__

REDIRECTS = {301, 302, 303, 307, 308}
RETRY_STATUSES = {429, 502, 503, 504}
MAX_REDIRECTS = 10
MAX_RETRIES = 5
MAX_DELAY = 30.0
TIMEOUT = 60.0


class HttpStatusError(Exception):
    """A non-success final status. `message` is the server's short JSON `message`/`error`, if any."""

    def __init__(self, status: int, message: str = "", retries: int = 0):
        self.status = status
        self.message = message
        self.retries = retries
        super().__init__(f"HTTP {status}")


class HttpConnectionError(Exception):
    """The server could not be reached or the connection broke before a response arrived."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[override]
        return None  # urllib then raises HTTPError for the 3xx, which `open_url` follows by hand


_OPENER = urllib.request.build_opener(_NoRedirect)


def origin(url: str) -> tuple[str, str, int | None]:
    s = urlsplit(url)
    port = s.port or {"http": 80, "https": 443}.get(s.scheme)
    return s.scheme.lower(), (s.hostname or "").lower(), port


def backoff_base() -> float:
    try:
        return max(0.0, float(os.environ.get("LOLSCAN_CIVITAI_BACKOFF", "1")))
    except ValueError:
        return 1.0


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _server_message(exc: urllib.error.HTTPError) -> str:
    import json

    try:
        body = exc.read(4096)
        data = json.loads(body.decode("utf-8", "replace"))
    except Exception:  # a non-JSON error page: no message
        return ""
    if isinstance(data, dict):
        msg = data.get("message") or data.get("error") or ""
        return " ".join(str(msg).split())[:200]
    return ""


def open_url(url: str, *, token: str | None, auth_origin: tuple, accept: str = "*/*") -> http.client.HTTPResponse:
    """GET `url`, following redirects; the caller reads and closes the returned response."""
    retries = redirects = 0
    while redirects <= MAX_REDIRECTS:
        headers = {"User-Agent": f"lolscan/{__version__}", "Accept": accept}
        if token and origin(url) == auth_origin:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(url, headers=headers, method="GET")
        try:
            return _OPENER.open(req, timeout=TIMEOUT)
        except urllib.error.HTTPError as exc:
            if exc.code in REDIRECTS:
                location = exc.headers.get("Location")
                exc.close()
                if not location:
                    raise HttpStatusError(exc.code, "redirect without a Location") from None
                new = urljoin(url, location)
                if urlsplit(url).scheme == "https" and urlsplit(new).scheme != "https":
                    raise HttpStatusError(exc.code, "refused a redirect from https to a non-https URL") from None
                url = new
                redirects += 1
                continue
            if exc.code in RETRY_STATUSES and retries < MAX_RETRIES:
                delay = _retry_after(exc.headers)
                delay = min(MAX_DELAY, delay if delay is not None else backoff_base() * 2**retries)
                exc.close()
                retries += 1
                time.sleep(delay)
                continue
            message = _server_message(exc)
            exc.close()
            raise HttpStatusError(exc.code, message, retries) from None
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise HttpConnectionError(str(reason)) from None
    raise HttpStatusError(310, f"more than {MAX_REDIRECTS} redirects")
