"""`civitai:` references, Civitai URLs and AIR against a loopback mock API and a second storage host."""
from __future__ import annotations

import time

import pytest
from servers.fixtures import CAT, DISNEY, run_together, sha256_hex, tree_files

from lolscan.errors import InputError
from lolscan.sources import resolve
from lolscan.sources.http import MAX_RETRIES

MID, VID = 4201, 128713


def publish_cat(civitai, **kw) -> dict:
    return civitai.add_lora(
        MID, VID, (7, "catundchat.safetensors", CAT),
        model_name="Cat und Chat", trained_words=("catundchat", "cute cat"), tags=("animal", "cat"), **kw,
    )


def cache_entries(sources_env) -> list:
    """Everything in the Civitai cache except lock files."""
    return [p for p in tree_files(sources_env / "lolscan-cache") if not p.name.endswith(".lock")]


def test_version_download_verified_with_metadata(civitai, storage) -> None:
    publish_cat(civitai)
    r = resolve(f"civitai:{VID}", progress=False)
    assert r.path.is_file() and r.path.read_bytes() == CAT.read_bytes()
    m = r.metadata
    assert m["sha256"] == sha256_hex(CAT) and m["size"] == CAT.stat().st_size
    assert (m["source"], m["model_id"], m["version_id"], m["name"], m["version"]) == ("civitai", MID, VID, "Cat und Chat", "v1.0")
    assert (m["base_model"], m["trained_words"], m["tags"]) == ("SD 1.5", ["catundchat", "cute cat"], ["animal", "cat"])
    assert m["air"] == f"urn:air:sd1:lora:civitai:{MID}@{VID}" and m["file_name"] == "catundchat.safetensors"
    assert r.uri == f"civitai:{VID}"
    assert len(storage.requests) == 1  # the bytes came from the storage host after the redirect


def test_every_reference_form_resolves_to_the_same_file(civitai) -> None:
    publish_cat(civitai)
    sha = sha256_hex(CAT)
    base = civitai.url
    forms = [
        f"civitai:{VID}", f"civitai:model/{MID}", f"civitai:{MID}@{VID}", f"civitai:hash:{sha}", f"civitai:hash:{sha[:10]}",
        f"{base}/models/{MID}?modelVersionId={VID}", f"{base}/models/{MID}/cat-und-chat", f"{base}/model-versions/{VID}",
        f"{base}/api/download/models/{VID}", f"{base}/api/download/models/{VID}?type=Model&format=SafeTensor",
        f"urn:air:sd1:lora:civitai:{MID}@{VID}", f"air:sd1:lora:civitai:{MID}@{VID}", f"urn:air:sd1:lora:civitai:{MID}",
    ]
    paths = set()
    for form in forms:
        r = resolve(form, progress=False)
        assert r.uri == f"civitai:{VID}", form
        assert r.metadata["sha256"] == sha, form
        paths.add(r.path)
    assert len(paths) == 1


def test_model_reference_takes_the_latest_version(civitai) -> None:
    publish_cat(civitai)
    civitai.add_lora(MID, VID + 1, (8, "disney.safetensors", DISNEY), version_name="v2.0")
    r = resolve(f"civitai:model/{MID}", progress=False)
    assert (r.uri, r.metadata["version"], sha256_hex(r.path)) == (f"civitai:{VID + 1}", "v2.0", sha256_hex(DISNEY))
    old = resolve(f"{civitai.url}/models/{MID}?modelVersionId={VID}", progress=False)
    assert sha256_hex(old.path) == sha256_hex(CAT)


def test_second_request_is_served_from_cache_without_network(civitai, storage) -> None:
    publish_cat(civitai)
    first = resolve(f"civitai:hash:{sha256_hex(CAT)}", progress=False)
    civitai.clear()
    storage.clear()
    for form in (f"civitai:{VID}", f"civitai:hash:{sha256_hex(CAT)}", f"urn:air:sd1:lora:civitai:{MID}@{VID}"):
        again = resolve(form, progress=False)
        assert again.path == first.path and again.metadata == first.metadata
    assert civitai.requests == [] and storage.requests == []


def test_token_sent_as_header_to_civitai_only_and_never_echoed(civitai, storage, sources_env, capsys, monkeypatch) -> None:
    secret = "cvt-SeCrEt-0123456789abcdef"
    publish_cat(civitai, token=secret)
    with pytest.raises(InputError) as info:
        resolve(f"civitai:{VID}", progress=False)
    msg = str(info.value)
    assert msg.startswith(f"civitai:{VID}:") and "token" in msg and "CIVITAI_TOKEN" in msg and "401" in msg
    r = resolve(f"civitai:{VID}", civitai_token=secret, progress=True)  # progress bar on stderr
    assert sha256_hex(r.path) == sha256_hex(CAT)
    assert all(q.headers.get("authorization") == f"Bearer {secret}" for q in civitai.requests[-3:])
    assert storage.requests and all("authorization" not in q.headers for q in storage.requests)
    assert storage.requests[0].host.startswith("localhost:")  # a different host name than the API's
    # A token pasted into a URL is moved into the header too, and the CIVITAI_TOKEN variable works.
    civitai.add_lora(MID, VID + 5, (9, "disney.safetensors", DISNEY), token=secret)
    pasted = resolve(f"{civitai.url}/api/download/models/{VID + 5}?token={secret}", progress=False)
    assert not any("token" in q.query for q in civitai.requests + storage.requests)
    monkeypatch.setenv("CIVITAI_TOKEN", secret)
    civitai.add_lora(MID, VID + 6, (10, "cat2.safetensors", CAT), token=secret)
    assert resolve(f"civitai:{VID + 6}", progress=False).path.is_file()
    out, err = capsys.readouterr()
    assert secret not in out + err
    for res in (r, pasted):
        assert secret not in repr(res.metadata) + res.uri + str(res.path)
    for f in tree_files(sources_env / "lolscan-cache"):
        assert secret not in str(f) and secret.encode() not in f.read_bytes(), f


@pytest.mark.parametrize(
    "knob,status,needle",
    [({"early_access": True}, 403, r"forbidden \(403\).*early access"), ({"archived": True}, 410, r"archived.*\(410\)")],
)
def test_forbidden_and_archived(civitai, sources_env, knob, status, needle) -> None:
    publish_cat(civitai, **knob)
    with pytest.raises(InputError, match=needle):
        resolve(f"civitai:{VID}", progress=False)
    assert cache_entries(sources_env) == []


def test_not_found_names_the_id(civitai) -> None:
    publish_cat(civitai)
    with pytest.raises(InputError) as info:
        resolve("civitai:999999", progress=False)
    assert "999999" in str(info.value) and "not found" in str(info.value)
    with pytest.raises(InputError, match="model 31337 not found"):
        resolve("civitai:model/31337", progress=False)
    with pytest.raises(InputError, match="hash ABCDEF0123 not found"):
        resolve("civitai:hash:abcdef0123", progress=False)


def test_rate_limit_then_success_with_bounded_backoff(civitai, storage, monkeypatch) -> None:
    publish_cat(civitai)
    civitai.rate_limit = {"/api/v1/model-versions/": 2, "/api/download/": 1}
    storage.rate_limit = 1
    t0 = time.monotonic()
    r = resolve(f"civitai:{VID}", progress=False)
    assert sha256_hex(r.path) == sha256_hex(CAT)
    assert time.monotonic() - t0 < 5
    assert sum(q.path.startswith("/api/v1/model-versions/") for q in civitai.requests) == 3
    assert len(storage.requests) == 2


def test_rate_limit_forever_gives_up_after_bounded_retries(civitai) -> None:
    publish_cat(civitai)
    civitai.rate_limit = {"/api/v1/": 1000}
    with pytest.raises(InputError, match="rate-limiting.*429"):
        resolve(f"civitai:{VID}", progress=False)
    assert len(civitai.requests) == MAX_RETRIES + 1


def test_retry_after_header_is_honoured(civitai, monkeypatch) -> None:
    publish_cat(civitai)
    monkeypatch.setenv("LOLSCAN_CIVITAI_BACKOFF", "5")  # would take 5 s; Retry-After says 0.05
    civitai.rate_limit = {"/api/v1/model-versions/": 1}
    civitai.retry_after = "0.05"
    t0 = time.monotonic()
    resolve(f"civitai:{VID}", progress=False)
    assert time.monotonic() - t0 < 3


def test_truncated_download_leaves_no_entry(civitai, sources_env) -> None:
    civitai.storage = None  # serve the body directly, cut in half
    publish_cat(civitai, truncate=True)
    with pytest.raises(InputError, match=r"interrupted.*nothing was cached"):
        resolve(f"civitai:{VID}", progress=False)
    assert cache_entries(sources_env) == []
    with pytest.raises(InputError, match="offline"):
        resolve(f"civitai:{VID}", offline=True, progress=False)


def test_wrong_published_hash_leaves_no_entry_then_recovers(civitai, sources_env) -> None:
    publish_cat(civitai, wrong_sha256=True)
    with pytest.raises(InputError, match=r"SHA-256 mismatch.*nothing was cached"):
        resolve(f"civitai:{VID}", progress=False)
    assert cache_entries(sources_env) == []
    publish_cat(civitai)  # the record is fixed upstream: the next request succeeds
    assert sha256_hex(resolve(f"civitai:{VID}", progress=False).path) == sha256_hex(CAT)


def test_offline_with_and_without_cache(civitai, storage) -> None:
    publish_cat(civitai)
    with pytest.raises(InputError, match="not in the lolscan cache.*offline mode is on") as info:
        resolve(f"civitai:{VID}", offline=True, progress=False)
    assert str(info.value).startswith(f"civitai:{VID}:")
    assert civitai.requests == []
    online = resolve(f"civitai:{VID}", progress=False)
    civitai.clear()
    storage.clear()
    for form in (f"civitai:{VID}", f"civitai:model/{MID}", f"{civitai.url}/models/{MID}?modelVersionId={VID}"):
        r = resolve(form, offline=True, progress=False)
        assert r.path == online.path and r.metadata["trained_words"] == ["catundchat", "cute cat"]
    with pytest.raises(InputError, match="offline"):
        resolve(f"civitai:hash:{sha256_hex(DISNEY)}", offline=True, progress=False)
    assert civitai.requests == [] and storage.requests == []


def test_concurrent_downloads_make_one_intact_entry(civitai, storage, sources_env) -> None:
    publish_cat(civitai)
    results = run_together(lambda: resolve(f"civitai:{VID}", progress=False), 3)
    assert len({r.path for r in results}) == 1
    assert sha256_hex(results[0].path) == sha256_hex(CAT)
    assert len(storage.requests) == 1  # the others waited on the lock and found the verified entry
    names = sorted(p.name for p in cache_entries(sources_env))
    assert names == ["catundchat.safetensors", "version.json"]


def test_file_selection(civitai) -> None:
    civitai.add_lora(MID, VID, [(1, "full.safetensors", CAT), (2, "half.safetensors", DISNEY), (3, "legacy.pt", b"pickle")])
    assert sha256_hex(resolve(f"civitai:{VID}", progress=False).path) == sha256_hex(CAT)  # the primary file
    second = resolve(f"civitai:{VID}+2", progress=False)
    assert (sha256_hex(second.path), second.uri) == (sha256_hex(DISNEY), f"civitai:{VID}+2")
    by_query = resolve(f"{civitai.url}/api/download/models/{VID}?type=Model&format=SafeTensor&fp=fp16", progress=False)
    assert by_query.path == second.path
    by_hash = resolve(f"civitai:hash:{sha256_hex(DISNEY)[:10]}", progress=False)
    assert by_hash.path == second.path
    with pytest.raises(InputError, match="not a SafeTensor file"):
        resolve(f"civitai:{VID}+3", progress=False)


def test_non_lora_and_pickle_only_versions_are_refused_before_download(civitai, storage) -> None:
    civitai.add_lora(1, 10, (1, "model.safetensors", CAT), model_type="Checkpoint")
    civitai.add_lora(2, 20, (2, "lora.pt", b"pickle"))
    with pytest.raises(InputError, match="is a Checkpoint, not a LoRA"):
        resolve("civitai:10", progress=False)
    with pytest.raises(InputError, match=r"no SafeTensor LoRA file.*lora\.pt"):
        resolve("civitai:20", progress=False)
    assert storage.requests == []


def test_unreachable_civitai_is_a_clean_error(sources_env, monkeypatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LOLSCAN_CIVITAI_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(InputError, match=f"civitai:{VID}: cannot reach Civitai"):
        resolve(f"civitai:{VID}", progress=False)


def test_unreachable_civitai_falls_back_for_model_references_only_when_cached(civitai) -> None:
    publish_cat(civitai)
    online = resolve(f"civitai:model/{MID}", progress=False)
    civitai.stop()
    assert resolve(f"civitai:model/{MID}", progress=False).path == online.path
    with pytest.raises(InputError, match="cannot reach Civitai"):
        resolve("civitai:model/777", progress=False)


def test_files_sharing_a_name_get_separate_entries(civitai) -> None:
    civitai.add_lora(MID, VID, [(5, "same.safetensors", CAT), (6, "same.safetensors", DISNEY)])
    a, b = resolve(f"civitai:{VID}", progress=False), resolve(f"civitai:{VID}+6", progress=False)
    assert a.path != b.path
    assert (sha256_hex(a.path), sha256_hex(b.path)) == (sha256_hex(CAT), sha256_hex(DISNEY))
