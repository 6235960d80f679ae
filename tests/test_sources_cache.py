"""The verified, atomic cache writer on its own (no network)."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import platformdirs
import pytest
from servers.fixtures import CAT

from lolscan.errors import InputError
from lolscan.sources.cache import cache_root, hf_cache_dir, safe_name, store_verified


def reader(data: bytes, fail_after: int | None = None, exc: BaseException | None = None):
    buf = io.BytesIO(data)
    sent = 0

    def read(n: int) -> bytes:
        nonlocal sent
        if fail_after is not None and sent >= fail_after:
            raise exc or ConnectionResetError("reset by peer")
        block = buf.read(min(n, 65536))
        sent += len(block)
        return block

    return read


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_success_writes_entry_and_returns_sha(tmp_path: Path) -> None:
    data = CAT.read_bytes()
    dest = tmp_path / "v" / "cat.safetensors"
    sha, size = store_verified(dest, reader(data), uri="civitai:1", declared_size=len(data),
                               expected_sha256=hashlib.sha256(data).hexdigest(), progress=True)
    assert dest.read_bytes() == data and size == len(data)
    assert sha == hashlib.sha256(data).hexdigest().upper()
    assert listing(dest.parent) == ["cat.safetensors"]


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"fail_after": 100_000}, "interrupted after"),
        ({"declared_size": 10**9}, "got 3227336 of 1000000000 bytes"),
        ({"expected_sha256": "00" * 32}, "SHA-256 mismatch"),
        ({"expected_size": 5}, "5 were expected"),
        ({"expected_prefix": "ABCDEF0123"}, "hash mismatch"),
    ],
)
def test_failures_leave_nothing_behind(tmp_path: Path, kwargs: dict, needle: str) -> None:
    data = CAT.read_bytes()
    fail_after = kwargs.pop("fail_after", None)
    kwargs.setdefault("declared_size", len(data))
    dest = tmp_path / "v" / "cat.safetensors"
    with pytest.raises(InputError, match=needle) as info:
        store_verified(dest, reader(data, fail_after), uri="civitai:1", progress=False, **kwargs)
    assert str(info.value).startswith("civitai:1:") and "nothing was cached" in str(info.value)
    assert listing(dest.parent) == []


def test_ctrl_c_during_download_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "cat.safetensors"
    with pytest.raises(KeyboardInterrupt):
        store_verified(dest, reader(CAT.read_bytes(), 70_000, KeyboardInterrupt()), uri="x", declared_size=None, progress=False)
    assert listing(tmp_path) == []


def test_cache_locations_follow_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LOLSCAN_CACHE_DIR", raising=False)
    assert cache_root() == Path(platformdirs.user_cache_dir("lolscan"))
    monkeypatch.setenv("LOLSCAN_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hf_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub2"))
    assert hf_cache_dir() == tmp_path / "hub2"


@pytest.mark.parametrize(
    "raw,safe",
    [("a/b/../lora.safetensors", "lora.safetensors"), ("..\\evil.safetensors", "evil.safetensors"),
     ("weird:name?.safetensors", "weird_name_.safetensors"), ("", "file"), ("..", "file")],
)
def test_safe_name(raw: str, safe: str) -> None:
    assert safe_name(raw) == safe
