"""Parsing of every remote reference form users paste (no network)."""
from __future__ import annotations

import pytest

from lolscan.errors import InputError
from lolscan.sources import is_remote
from lolscan.sources.uris import CivitaiRef, HfRef, parse

SHA = "0123456789abcdef0123456789abcdef01234567"
SHA256 = "FB286C8E569D6A07401BD5599D3D1A64126C0B240D2D1D00174602A967E59C9B"

TABLE = [
    # Hugging Face
    ("hf://owner/repo", HfRef("owner/repo"), "hf://owner/repo"),
    ("hf://owner/repo@dev", HfRef("owner/repo", "dev"), "hf://owner/repo@dev"),
    (f"hf://owner/repo@{SHA}", HfRef("owner/repo", SHA), f"hf://owner/repo@{SHA}"),
    ("hf://owner/repo/sub/x.safetensors", HfRef("owner/repo", None, "sub/x.safetensors"), "hf://owner/repo/sub/x.safetensors"),
    ("hf://owner/repo@v1.0/x.safetensors", HfRef("owner/repo", "v1.0", "x.safetensors"), "hf://owner/repo@v1.0/x.safetensors"),
    ("hf://owner/repo@refs%2Fpr%2F3", HfRef("owner/repo", "refs/pr/3"), "hf://owner/repo@refs%2Fpr%2F3"),
    ("HF://Owner/Repo.v2/", HfRef("Owner/Repo.v2"), "hf://Owner/Repo.v2"),
    ("https://huggingface.co/owner/repo", HfRef("owner/repo"), "hf://owner/repo"),
    ("https://huggingface.co/owner/repo/", HfRef("owner/repo"), "hf://owner/repo"),
    ("https://hf.co/owner/repo", HfRef("owner/repo"), "hf://owner/repo"),
    ("https://huggingface.co/owner/repo/tree/main", HfRef("owner/repo", "main"), "hf://owner/repo@main"),
    ("https://huggingface.co/owner/repo/tree/main/ckpt-5", HfRef("owner/repo", "main", "ckpt-5"), "hf://owner/repo@main/ckpt-5"),
    ("https://huggingface.co/owner/repo/blob/main/a%20b.safetensors", HfRef("owner/repo", "main", "a b.safetensors"),
     "hf://owner/repo@main/a b.safetensors"),
    (f"https://huggingface.co/owner/repo/resolve/{SHA}/pytorch_lora_weights.safetensors?download=true",
     HfRef("owner/repo", SHA, "pytorch_lora_weights.safetensors"), f"hf://owner/repo@{SHA}/pytorch_lora_weights.safetensors"),
    # Civitai scheme
    ("civitai:128713", CivitaiRef(version_id=128713), "civitai:128713"),
    ("civitai:model/4201", CivitaiRef(model_id=4201), "civitai:model/4201"),
    ("civitai:models/4201", CivitaiRef(model_id=4201), "civitai:model/4201"),
    ("civitai:4201@128713", CivitaiRef(version_id=128713, model_id=4201), "civitai:128713"),
    ("civitai:128713+99", CivitaiRef(version_id=128713, file_id=99), "civitai:128713+99"),
    (f"civitai:hash:{SHA256.lower()}", CivitaiRef(file_hash=SHA256), f"civitai:hash:{SHA256}"),
    ("civitai:hash:fb286c8e56", CivitaiRef(file_hash="FB286C8E56"), "civitai:hash:FB286C8E56"),
    # Civitai URLs
    ("https://civitai.com/models/4201", CivitaiRef(model_id=4201), "civitai:model/4201"),
    ("https://civitai.com/models/4201/realistic-vision", CivitaiRef(model_id=4201), "civitai:model/4201"),
    ("https://civitai.com/models/4201/realistic-vision?modelVersionId=128713",
     CivitaiRef(version_id=128713, model_id=4201), "civitai:128713"),
    ("https://civitai.com/models/4201?modelVersionId=128713", CivitaiRef(version_id=128713, model_id=4201), "civitai:128713"),
    ("https://www.civitai.com/model-versions/128713", CivitaiRef(version_id=128713), "civitai:128713"),
    ("https://civitai.green/models/4201", CivitaiRef(model_id=4201), "civitai:model/4201"),
    ("https://civitai.com/api/download/models/128713", CivitaiRef(version_id=128713), "civitai:128713"),
    ("https://civitai.com/api/download/models/128713?type=Model&format=SafeTensor&fp=fp16",
     CivitaiRef(version_id=128713, file_type="Model", file_format="SafeTensor", file_fp="fp16"), "civitai:128713"),
    ("https://civitai.com/api/v1/model-versions/128713", CivitaiRef(version_id=128713), "civitai:128713"),
    ("https://civitai.com/api/v1/models/4201", CivitaiRef(model_id=4201), "civitai:model/4201"),
    ("https://civitai.com/api/v1/model-versions/by-hash/fb286c8e56", CivitaiRef(file_hash="FB286C8E56"), "civitai:hash:FB286C8E56"),
    # AIR
    ("urn:air:sd1:lora:civitai:4201@128713", CivitaiRef(version_id=128713, model_id=4201), "civitai:128713"),
    ("air:sdxl:lora:civitai:185722@349880", CivitaiRef(version_id=349880, model_id=185722), "civitai:349880"),
    ("urn:air:sdxl:lora:civitai:185722@349880*0.8", CivitaiRef(version_id=349880, model_id=185722), "civitai:349880"),
    ("urn:air:flux1:lora:civitai:1@2+3.safetensors", CivitaiRef(version_id=2, model_id=1, file_id=3), "civitai:2+3"),
    ("urn:air:civitai:4201", CivitaiRef(model_id=4201), "civitai:model/4201"),
]


@pytest.mark.parametrize("text,ref,uri", TABLE, ids=[t[0][:60] for t in TABLE])
def test_parse_table(text: str, ref, uri: str) -> None:
    got = parse(text)
    assert got == ref
    assert got.uri == uri
    assert is_remote(text)


BAD = [
    ("hf://owner", "owner/repo"),
    ("hf://datasets/owner/repo", "model repositories"),
    ("hf://owner/repo@", "revision"),
    ("hf://owner/re po", "owner/name"),
    ("hf://owner/repo/../x.safetensors", "invalid path"),
    ("https://huggingface.co/owner/repo/blob/main", "must name a file"),
    ("https://huggingface.co/owner/repo/discussions/3", "not a Hugging Face"),
    ("civitai:abc", "numeric"),
    ("civitai:hash:xyz", "hash"),
    ("civitai:model/", "numeric"),
    ("https://civitai.com/user/someone", "not a Civitai"),
    ("https://civitai.com/models/abc", "numeric"),
    ("urn:air:sd1:checkpoint:civitai:4201@128713", "not a LoRA"),
    ("urn:air:sd1:lora:huggingface:4201", "not supported"),
    ("urn:air:sd1:lora:civitai:", "AIR"),
    ("https://example.com/lora.safetensors", "only huggingface.co and civitai.com"),
]


@pytest.mark.parametrize("text,needle", BAD, ids=[b[0] for b in BAD])
def test_malformed_references_raise_input_error_naming_them(text: str, needle: str) -> None:
    with pytest.raises(InputError) as info:
        parse(text)
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg
    assert info.value.exit_code == 3


@pytest.mark.parametrize("path", ["lora.safetensors", "/tmp/x/adapter", "./civitai_lora.safetensors", "C:/loras/a.safetensors", "hf_lora"])
def test_local_paths_are_not_remote(path: str) -> None:
    assert not is_remote(path)


def test_pasted_civitai_token_is_lifted_out_of_the_uri() -> None:
    secret = "c0ffee-secret-token"
    text = f"https://civitai.com/api/download/models/128713?type=Model&token={secret}"
    ref = parse(text)
    assert ref.token == secret
    assert secret not in ref.uri and secret not in repr(ref)
    with pytest.raises(InputError) as info:  # and a malformed one is masked in the message
        parse(f"https://civitai.com/user/x?token={secret}")
    assert secret not in str(info.value)


def test_configured_endpoints_are_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:4444")
    monkeypatch.setenv("LOLSCAN_CIVITAI_ENDPOINT", "http://127.0.0.1:5555/")
    assert parse("http://127.0.0.1:4444/o/r/blob/main/f.safetensors") == HfRef("o/r", "main", "f.safetensors")
    assert parse("http://127.0.0.1:5555/models/1?modelVersionId=2") == CivitaiRef(version_id=2, model_id=1)
    with pytest.raises(InputError):
        parse("http://127.0.0.1:6666/o/r")
