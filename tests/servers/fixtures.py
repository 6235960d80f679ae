"""pytest fixtures for the remote-source tests: a hermetic cache/env per test and the mock servers.

Import them into a test module (`from servers.fixtures import hub, civitai, ...`).
"""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from .civitai import MockCivitai, MockStorage
from .hub import MockHub

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "real"
PEFT_DIR = REAL / "gradience_tiny_lora"
CAT = REAL / "catundchat_sd15_pytorch_lora_weights.safetensors"
DISNEY = REAL / "cloneofsimo_lora_disney.safetensors"
ANALOG = REAL / "cloneofsimo_analog_svd_rank4.safetensors"

_ENV_CLEARED = (
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT",
    "CIVITAI_TOKEN", "LOLSCAN_CIVITAI_ENDPOINT", "HF_HUB_DISABLE_IMPLICIT_TOKEN",
)


def sha256_hex(path_or_bytes: Path | bytes) -> str:
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    return hashlib.sha256(data).hexdigest().upper()


def run_together(fn: Callable[[], object], n: int) -> list:
    """Call `fn` from `n` threads released at the same instant; return the results, fail on any error."""
    results, errors = [], []
    barrier = threading.Barrier(n)

    def work() -> None:
        barrier.wait()
        try:
            results.append(fn())
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(results) == n
    return results


def tree_files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in sorted(root.rglob("*")) if p.is_file()]


@pytest.fixture
def sources_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary lolscan and Hugging Face caches, no ambient tokens, fast back-off."""
    for name in _ENV_CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOLSCAN_CACHE_DIR", str(tmp_path / "lolscan-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("LOLSCAN_CIVITAI_BACKOFF", "0.01")
    from huggingface_hub import constants

    # huggingface_hub froze these at import: keep a token file or offline flag of the machine out.
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path


@pytest.fixture
def hub(sources_env: Path, monkeypatch: pytest.MonkeyPatch):
    with MockHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture
def storage():
    with MockStorage() as server:
        yield server


@pytest.fixture
def civitai(sources_env: Path, storage: MockStorage, monkeypatch: pytest.MonkeyPatch):
    with MockCivitai(storage) as server:
        monkeypatch.setenv("LOLSCAN_CIVITAI_ENDPOINT", server.url)
        yield server
