"""`hf://` and huggingface.co references against a loopback mock Hub, through huggingface_hub itself."""
from __future__ import annotations


import pytest
from servers.fixtures import CAT, DISNEY, PEFT_DIR, run_together, sha256_hex, tree_files

from lolscan.errors import InputError
from lolscan.sources import resolve
from lolscan.sources.hub import plan_files

README = b"---\nbase_model: microsoft/DialoGPT-small\nlibrary_name: peft\ntags:\n- lora\n- test\n---\n# tiny\n"
DIFFUSERS_README = b"---\nbase_model: runwayml/stable-diffusion-v1-5\ninstance_prompt: catundchat\ntags: [lora, diffusers]\n---\n"


def peft_files() -> dict:
    return {
        "adapter_config.json": PEFT_DIR / "adapter_config.json",
        "adapter_model.safetensors": PEFT_DIR / "adapter_model.safetensors",
        "README.md": README,
        "optimizer.pt": b"\0" * 4096,  # must never be fetched
        "checkpoint-10/adapter_model.safetensors": b"old",
    }


def test_peft_repo_fetches_only_config_and_weights(hub) -> None:
    sha = hub.add_commit("acme/tiny-peft", peft_files())
    r = resolve("hf://acme/tiny-peft", progress=False)
    assert r.path.is_dir()
    assert {p.name for p in r.path.iterdir() if p.is_file()} <= {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert (r.path / "adapter_model.safetensors").read_bytes() == (PEFT_DIR / "adapter_model.safetensors").read_bytes()
    assert (r.path / "adapter_config.json").read_bytes() == (PEFT_DIR / "adapter_config.json").read_bytes()
    fetched = {p.rsplit("/", 1)[-1] for p in hub.downloads()}
    assert fetched == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert r.uri == f"hf://acme/tiny-peft@{sha}"
    m = r.metadata
    assert (m["source"], m["repo_id"], m["commit"], m["revision"]) == ("huggingface", "acme/tiny-peft", sha, "main")
    assert m["base_model"] == "microsoft/DialoGPT-small"
    assert m["library_name"] == "peft" and m["tags"] == ["lora", "test"]


def test_single_lora_file_repo_and_card_trigger_words(hub) -> None:
    hub.add_commit("acme/cat", {"pytorch_lora_weights.safetensors": CAT, "README.md": DIFFUSERS_README, "image.png": b"png"})
    r = resolve("hf://acme/cat", progress=False)
    assert r.path.is_file() and sha256_hex(r.path) == sha256_hex(CAT)
    assert r.uri.endswith("/pytorch_lora_weights.safetensors")
    assert r.metadata["base_model"] == "runwayml/stable-diffusion-v1-5"
    assert r.metadata["trained_words"] == ["catundchat"]
    assert not any(p.endswith("image.png") for p in hub.downloads())


def test_several_candidates_list_them_and_ask_for_a_path(hub) -> None:
    hub.add_commit("acme/many", {"a.safetensors": CAT, "b.safetensors": DISNEY})
    with pytest.raises(InputError) as info:
        resolve("hf://acme/many", progress=False)
    msg = str(info.value)
    assert msg.startswith("hf://acme/many:")
    assert "a.safetensors" in msg and "b.safetensors" in msg and "hf://owner/repo[@revision]/<path>" in msg
    assert hub.downloads() == []
    r = resolve("hf://acme/many/b.safetensors", progress=False)  # the path form then works
    assert sha256_hex(r.path) == sha256_hex(DISNEY)


def test_plan_prefers_diffusers_name_and_finds_nested_peft() -> None:
    assert plan_files(["pytorch_lora_weights.safetensors", "x.safetensors"], None, "u").files == ("pytorch_lora_weights.safetensors",)
    nested = plan_files(["README.md", "run1/adapter_config.json", "run1/adapter_model.safetensors"], None, "u")
    assert (nested.kind, nested.target) == ("peft", "run1")
    half = plan_files(["adapter_config.json", "adapter_model.safetensors"], "adapter_model.safetensors", "u")
    assert half.kind == "peft" and half.files == ("adapter_config.json", "adapter_model.safetensors")
    with pytest.raises(InputError, match="no adapter_config.json and no .safetensors"):
        plan_files(["README.md", "model.bin"], None, "u")


def test_url_forms(hub) -> None:
    sha = hub.add_commit("acme/mix", {"sub/lora.safetensors": CAT, "sub/other.txt": b"x",
                                      "peft/adapter_config.json": PEFT_DIR / "adapter_config.json",
                                      "peft/adapter_model.safetensors": PEFT_DIR / "adapter_model.safetensors"})
    base = hub.url  # HF_ENDPOINT's host is accepted like huggingface.co
    for url in (f"{base}/acme/mix/blob/main/sub/lora.safetensors", f"{base}/acme/mix/resolve/{sha}/sub/lora.safetensors?download=true"):
        r = resolve(url, progress=False)
        assert sha256_hex(r.path) == sha256_hex(CAT), url
        assert r.uri == f"hf://acme/mix@{sha}/sub/lora.safetensors"
    r = resolve(f"{base}/acme/mix/tree/main/peft", progress=False)
    assert r.path.is_dir() and (r.path / "adapter_config.json").is_file()
    assert r.uri == f"hf://acme/mix@{sha}/peft"
    assert resolve(f"{base}/acme/mix/tree/main/sub", progress=False).path.name == "lora.safetensors"


def test_revision_pinning_by_sha_and_branch(hub) -> None:
    old = hub.add_commit("acme/evolving", {"lora.safetensors": CAT})
    hub.add_commit("acme/evolving", {"lora.safetensors": CAT}, branch="stable")  # a branch at the same content
    new = hub.add_commit("acme/evolving", {"lora.safetensors": DISNEY})
    assert old != new
    assert sha256_hex(resolve("hf://acme/evolving", progress=False).path) == sha256_hex(DISNEY)
    pinned = resolve(f"hf://acme/evolving@{old}", progress=False)
    assert sha256_hex(pinned.path) == sha256_hex(CAT) and pinned.uri == f"hf://acme/evolving@{old}/lora.safetensors"
    stable = resolve("hf://acme/evolving@stable", progress=False)
    assert sha256_hex(stable.path) == sha256_hex(CAT) and stable.metadata["revision"] == "stable"
    hub.clear()  # a pinned commit that is cached needs no network at all
    again = resolve(f"hf://acme/evolving@{old}", progress=False)
    canonical = resolve(pinned.uri, progress=False)
    assert again.path == pinned.path == canonical.path and canonical.uri == pinned.uri
    assert hub.requests == []
    with pytest.raises(InputError, match="revision 'nope' not found"):
        resolve("hf://acme/evolving@nope", progress=False)


def test_private_repo_token_is_sent_but_never_echoed(hub, sources_env, capsys, monkeypatch) -> None:
    secret = "hf_SeCrEtToKeN1234567890"
    hub.add_commit("acme/private", {"pytorch_lora_weights.safetensors": CAT, "README.md": DIFFUSERS_README}, token=secret)
    with pytest.raises(InputError) as info:
        resolve("hf://acme/private", progress=False)
    assert "token" in str(info.value) and "acme/private" in str(info.value)
    r = resolve("hf://acme/private", hf_token=secret, progress=True)
    assert sha256_hex(r.path) == sha256_hex(CAT)
    assert any(q.headers.get("authorization") == f"Bearer {secret}" for q in hub.requests)
    monkeypatch.setenv("HF_TOKEN", secret)  # the environment variable works as well
    assert resolve("hf://acme/private@main/pytorch_lora_weights.safetensors", progress=False).path.is_file()
    out, err = capsys.readouterr()
    assert secret not in out + err
    assert secret not in repr(r.metadata) + r.uri
    for f in tree_files(sources_env / "lolscan-cache", sources_env / "hf"):
        assert secret not in str(f) and secret.encode() not in f.read_bytes(), f


def test_gated_and_missing(hub) -> None:
    hub.add_commit("acme/gated", {"pytorch_lora_weights.safetensors": CAT}, token="hf_x", gated=True)
    hub.add_commit("acme/cat", {"pytorch_lora_weights.safetensors": CAT})
    with pytest.raises(InputError, match="gated repository.*token"):
        resolve("hf://acme/gated", progress=False)
    with pytest.raises(InputError) as info:
        resolve("hf://acme/does-not-exist", progress=False)
    assert "acme/does-not-exist" in str(info.value) and info.value.exit_code == 3
    with pytest.raises(InputError, match="no file or folder 'missing.safetensors'"):
        resolve("hf://acme/cat/missing.safetensors", progress=False)


def test_offline_with_and_without_cache(hub, monkeypatch) -> None:
    sha = hub.add_commit("acme/tiny-peft", peft_files())
    with pytest.raises(InputError, match="offline mode is on") as info:
        resolve("hf://acme/tiny-peft", offline=True, progress=False)
    assert info.value.path == "hf://acme/tiny-peft" and str(info.value).startswith("hf://acme/tiny-peft:")
    assert hub.requests == []
    online = resolve("hf://acme/tiny-peft", progress=False)
    hub.clear()
    for target in ("hf://acme/tiny-peft", online.uri):
        r = resolve(target, offline=True, progress=False)
        assert r.path == online.path and r.metadata["base_model"] == "microsoft/DialoGPT-small"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read per call, not only at import
    assert resolve("hf://acme/tiny-peft", progress=False).metadata["commit"] == sha
    with pytest.raises(InputError, match="offline"):
        resolve("hf://acme/tiny-peft@other-branch", progress=False)
    assert hub.requests == []


def test_unreachable_hub_is_a_clean_error(sources_env, monkeypatch) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(InputError, match="hf://acme/x:"):
        resolve("hf://acme/x", progress=False)


def test_concurrent_resolves_share_one_intact_entry(hub) -> None:
    hub.add_commit("acme/cat", {"pytorch_lora_weights.safetensors": CAT})
    results = run_together(lambda: resolve("hf://acme/cat", progress=False), 2)
    assert results[0].path == results[1].path
    assert sha256_hex(results[0].path) == sha256_hex(CAT)


def test_unreachable_hub_falls_back_to_the_last_resolved_copy(hub) -> None:
    hub.add_commit("acme/cat", {"pytorch_lora_weights.safetensors": CAT})
    online = resolve("hf://acme/cat", progress=False)
    hub.stop()
    again = resolve("hf://acme/cat", progress=False)
    assert again.path == online.path and again.uri == online.uri
    with pytest.raises(InputError, match="hf://acme/other: cannot reach the Hub"):
        resolve("hf://acme/other", progress=False)


def _blobs(sources_env) -> list:
    return [p for p in tree_files(sources_env / "hf") if "/blobs/" in str(p) or p.name.endswith(".incomplete")]


def test_truncated_hub_download_leaves_no_entry(hub, sources_env, monkeypatch) -> None:
    import types

    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd, "time", types.SimpleNamespace(sleep=lambda s: None))  # its 5 resume tries, without 1 s waits
    hub.add_commit("acme/cat", {"pytorch_lora_weights.safetensors": CAT})
    hub.truncate.add("acme/cat/pytorch_lora_weights.safetensors")
    with pytest.raises(InputError, match=r"^hf://acme/cat: download interrupted.*nothing was cached"):
        resolve("hf://acme/cat", progress=False)
    assert _blobs(sources_env) == []
    with pytest.raises(InputError, match="offline"):
        resolve("hf://acme/cat", offline=True, progress=False)


def test_hub_file_with_wrong_sha256_is_removed_from_the_cache(hub, sources_env) -> None:
    hub.add_commit("acme/cat", {"pytorch_lora_weights.safetensors": CAT})
    hub.tamper.add("acme/cat/pytorch_lora_weights.safetensors")
    with pytest.raises(InputError, match=r"SHA-256 mismatch.*removed it from the cache"):
        resolve("hf://acme/cat", progress=False)
    assert _blobs(sources_env) == []
    with pytest.raises(InputError, match="offline"):
        resolve("hf://acme/cat", offline=True, progress=False)
    hub.tamper.clear()  # the next online request downloads a good copy
    assert sha256_hex(resolve("hf://acme/cat", progress=False).path) == sha256_hex(CAT)
