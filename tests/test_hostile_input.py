"""Hostile or broken files: one clean line naming the file, exit code 3, never a traceback."""
from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "lolscan", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def _good_lora(path: Path) -> None:
    save_file({"lora_unet_a.lora_down.weight": torch.randn(2, 4), "lora_unet_a.lora_up.weight": torch.randn(3, 2)}, path)


def _raw_safetensors(path: Path, header: dict, data: bytes = b"") -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = tmp / "good.safetensors"
    _good_lora(good)
    raw = good.read_bytes()
    cases: dict[str, tuple[Path, str]] = {}

    p = tmp / "truncated.safetensors"
    p.write_bytes(raw[: len(raw) - 7])
    cases["truncated"] = (p, "outside the file")

    p = tmp / "tiny.safetensors"
    p.write_bytes(b"\x01\x02")
    cases["shorter than header length"] = (p, "shorter than")

    p = tmp / "header_too_long.safetensors"
    p.write_bytes(struct.pack("<Q", 5000) + b'{"a": 1}')
    cases["header length larger than file"] = (p, "truncated safetensors file")

    p = tmp / "not_json.safetensors"
    p.write_bytes(struct.pack("<Q", 12) + b"this is junk")
    cases["non-JSON header"] = (p, "not valid JSON")

    p = tmp / "huge_header.safetensors"
    p.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    cases["oversized header"] = (p, "over the")

    p = tmp / "int_weights.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.ones(2, 4, dtype=torch.int32), "lora_unet_a.lora_up.weight": torch.ones(3, 2, dtype=torch.int32)}, p)
    cases["integer dtype"] = (p, "expected floating point")

    p = tmp / "bad_dtype.safetensors"
    _raw_safetensors(p, {"x.lora_A.weight": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}}, b"\0")
    cases["unknown dtype"] = (p, "unsupported dtype")

    p = tmp / "size_mismatch.safetensors"
    _raw_safetensors(p, {"x.lora_A.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}, b"\0" * 8)
    cases["bytes do not fit shape"] = (p, "do not fit shape")

    p = tmp / "rank_mismatch.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.randn(2, 4), "lora_unet_a.lora_up.weight": torch.randn(3, 5)}, p)
    cases["A/B shape mismatch"] = (p, "rank mismatch")

    p = tmp / "lonely.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.randn(2, 4)}, p)
    cases["down without up"] = (p, "no up weight")

    p = tmp / "weights.pt"
    torch.save({"a.lora_A.weight": torch.randn(2, 2)}, p)
    cases["pickle without --allow-pickle"] = (p, "--allow-pickle")

    p = tmp / "disguised.safetensors"
    torch.save({"a.lora_A.weight": torch.randn(2, 2)}, p)
    cases["pickle disguised as safetensors"] = (p, "--allow-pickle")

    p = tmp / "oft.safetensors"
    save_file({"lora_unet_a.oft_blocks": torch.randn(4, 2, 2), "lora_unet_a.alpha": torch.tensor(1e-3)}, p)
    cases["OFT"] = (p, "OFT")

    p = tmp / "ia3.safetensors"
    save_file({"base_model.model.q.ia3_l": torch.randn(4, 1)}, p)
    cases["IA3"] = (p, "IA³")

    p = tmp / "empty_folder"
    p.mkdir()
    cases["folder without adapters"] = (p, "no adapter files")

    d = tmp / "peft_oft"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "OFT", "r": 4}))
    save_file({"base_model.model.q.oft_R.weight": torch.randn(4, 6)}, d / "adapter_model.safetensors")
    cases["PEFT OFT folder"] = (d, "OFT")
    return cases


def test_every_hostile_file_is_a_one_line_error_with_exit_3(tmp_path):
    for label, (path, needle) in _cases(tmp_path).items():
        res = run_cli("inspect", str(path))
        assert res.returncode == 3, (label, res.returncode, res.stderr)
        assert "Traceback" not in res.stderr, (label, res.stderr)
        lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
        assert len(lines) == 1, (label, res.stderr)
        assert path.name in lines[0] and needle in lines[0], (label, lines[0])


def test_one_bad_file_in_a_folder_does_not_stop_the_others(tmp_path):
    _good_lora(tmp_path / "a_good.safetensors")
    (tmp_path / "b_bad.safetensors").write_bytes(b"\x00" * 3)
    res = run_cli("inspect", str(tmp_path), "--json")
    assert res.returncode == 3
    report = json.loads(res.stdout)
    assert [Path(a["source"]).name for a in report["adapters"]] == ["a_good.safetensors"]
    assert len(report["errors"]) == 1 and "b_bad.safetensors" in report["errors"][0]["error"]


def test_allow_pickle_reads_weights_only(tmp_path):
    p = tmp_path / "adapter.bin"
    torch.save({"lora_unet_a.lora_down.weight": torch.randn(2, 4), "lora_unet_a.lora_up.weight": torch.randn(3, 2)}, p)
    res = run_cli("inspect", str(p), "--allow-pickle", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["adapters"][0]["modules"] == 1


def test_malicious_pickle_is_refused_even_with_allow_pickle(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.bin"
    with open(p, "wb") as fh:
        pickle.dump({"a": Evil()}, fh)
    res = run_cli("inspect", str(p), "--allow-pickle")
    assert res.returncode == 3 and not marker.exists()
    assert "Traceback" not in res.stderr and "evil.bin" in res.stderr


def test_missing_target_is_exit_3_and_usage_error_is_exit_2(tmp_path):
    assert run_cli("inspect", str(tmp_path / "nope.safetensors")).returncode == 3
    assert run_cli("inspect", "--no-such-option", "x").returncode == 2
