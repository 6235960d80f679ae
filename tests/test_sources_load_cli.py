"""Remote references through `lolscan.load` and the `lolscan inspect` command (mock servers, real sockets)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from servers.fixtures import CAT, PEFT_DIR, sha256_hex

import lolscan
from lolscan.errors import InputError
from lolscan.sources import resolve

ROOT = Path(__file__).resolve().parents[1]
README = b"---\nbase_model: microsoft/DialoGPT-small\nlibrary_name: peft\n---\n"


def test_load_remote_peft_and_civitai_match_local_reads(hub, civitai) -> None:
    hub.add_commit("acme/tiny-peft", {"adapter_config.json": PEFT_DIR / "adapter_config.json",
                                      "adapter_model.safetensors": PEFT_DIR / "adapter_model.safetensors", "README.md": README})
    civitai.add_lora(11, 111, (1, "cat.safetensors", CAT), base_model="SD 1.5", trained_words=("catundchat",))
    for uri, local in (("hf://acme/tiny-peft", PEFT_DIR), ("civitai:111", CAT)):
        remote, ref = lolscan.load(uri, progress=False), lolscan.load(str(local))
        assert list(remote.layers) == list(ref.layers), uri
        for name in ref.layers:
            a, b = remote.layers[name], ref.layers[name]
            assert a.U.equal(b.U) and a.V.equal(b.V), (uri, name)
    peft = lolscan.load("hf://acme/tiny-peft", progress=False)
    assert peft.source.startswith("hf://acme/tiny-peft@")
    assert peft.metadata["source"]["base_model"] == "microsoft/DialoGPT-small"
    cat = lolscan.load("civitai:111", progress=False)
    assert cat.source == "civitai:111"
    assert (cat.metadata["source"]["base_model"], cat.metadata["source"]["trained_words"]) == ("SD 1.5", ["catundchat"])


def test_load_error_path_is_input_error_naming_the_uri(civitai, hub) -> None:
    with pytest.raises(InputError) as info:
        lolscan.load("civitai:424242", progress=False)
    assert info.value.exit_code == 3 and str(info.value).startswith("civitai:424242:") and "not found" in str(info.value)
    with pytest.raises(InputError, match="^hf://acme/none:.*not found"):
        lolscan.load("hf://acme/none", progress=False)
    with pytest.raises(InputError, match="offline"):
        lolscan.load("civitai:111", offline=True)


def _cli(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lolscan", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_cli_inspect_remote_with_token_error_and_offline(civitai, hub, storage) -> None:
    secret = "cvt-CLI-SeCrEt-42"
    civitai.add_lora(11, 111, (1, "cat.safetensors", CAT), trained_words=("catundchat",), token=secret)
    env = {k: os.environ[k] for k in ("LOLSCAN_CACHE_DIR", "HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT", "LOLSCAN_CIVITAI_ENDPOINT")}
    ok = _cli(["inspect", "--json", "civitai:111"], {**env, "CIVITAI_TOKEN": secret})
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)["adapters"][0]
    assert report["source"] == "civitai:111" and report["modules"] == 128
    assert report["metadata"]["source.trained_words"] == ["catundchat"]
    assert report["sha256"] == sha256_hex(CAT)  # inspect hashes the cached copy (metadata local_path)
    assert secret not in ok.stdout + ok.stderr
    assert any(q.headers.get("authorization") == f"Bearer {secret}" for q in civitai.requests)

    missing = _cli(["inspect", "civitai:999"], env)
    assert missing.returncode == 3
    lines = [l for l in missing.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "civitai:999" in lines[0] and "not found" in lines[0], missing.stderr

    offline = _cli(["inspect", "--offline", "hf://acme/never-fetched"], env)
    assert offline.returncode == 3 and "offline" in offline.stderr and "Traceback" not in offline.stderr
    assert not any("never-fetched" in q.path for q in hub.requests)


def test_offline_mode_opens_no_socket_at_all(hub, civitai, monkeypatch) -> None:
    import socket

    hub.add_commit("acme/tiny-peft", {"adapter_config.json": PEFT_DIR / "adapter_config.json",
                                      "adapter_model.safetensors": PEFT_DIR / "adapter_model.safetensors", "README.md": README})
    civitai.add_lora(11, 111, (1, "cat.safetensors", CAT))
    online = [resolve(u, progress=False) for u in ("hf://acme/tiny-peft", "civitai:model/11")]

    def refuse(*args, **kwargs):
        raise AssertionError("offline mode opened a network connection")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    offline = [resolve(u, offline=True, progress=False) for u in ("hf://acme/tiny-peft", "civitai:model/11")]
    assert [r.path for r in offline] == [r.path for r in online]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve("hf://acme/tiny-peft", progress=False).path == online[0].path
    with pytest.raises(InputError, match="offline"):
        resolve("civitai:222", offline=True, progress=False)
