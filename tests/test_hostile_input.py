"""Hostile or broken files: one clean line naming the file, exit code 3, never a traceback."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import time
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lolscan

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "models" / "examples" / "lora-00553"  # a bundled PEFT example


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "lolscan", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def _good_lora(path: Path) -> None:
    save_file({"lora_unet_a.lora_down.weight": torch.randn(2, 4), "lora_unet_a.lora_up.weight": torch.randn(3, 2)}, path)


def _raw_safetensors(path: Path, header: dict, data: bytes = b"") -> None:
    _raw_bytes(path, json.dumps(header).encode(), data)


def _raw_bytes(path: Path, header: bytes, data: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


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

    # --- issue 24: what the fuzz pass found ---
    entry = {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}
    p = tmp / "nested.safetensors"
    _raw_bytes(p, b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    cases["deeply nested header JSON"] = (p, "nested too deeply")
    p = tmp / "bigint.safetensors"
    _raw_bytes(p, b'{"x.lora_A.weight": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}', b"\0" * 4)
    cases["5,000-digit integer in the header"] = (p, "not valid JSON")
    p = tmp / "u64.safetensors"
    _raw_safetensors(p, {"x.lora_A.weight": {"dtype": "F32", "shape": [0, 2 ** 64], "data_offsets": [0, 0]}})
    cases["dimension over 2^64"] = (p, "malformed shape")
    p = tmp / "bool_dim.safetensors"
    _raw_safetensors(p, {"x.lora_A.weight": {"dtype": "F32", "shape": [True, 1], "data_offsets": [0, 4]}}, b"\0" * 4)
    cases["true as a dimension"] = (p, "malformed shape")
    p = tmp / "list_dtype.safetensors"
    _raw_safetensors(p, {"x.lora_A.weight": {**entry, "dtype": ["F32"]}}, b"\0" * 4)
    cases["a list as dtype"] = (p, "unsupported dtype")
    p = tmp / "nan_constant.safetensors"
    _raw_bytes(p, b'{"x.lora_A.weight": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}, "__metadata__": {"a": NaN}}', b"\0" * 4)
    cases["NaN constant in the header"] = (p, "not valid JSON")
    p = tmp / "surrogate.safetensors"
    _raw_bytes(p, b'{"lora_unet_\\ud800.lora_down.weight": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]},'
                  b' "lora_unet_\\ud800.lora_up.weight": {"dtype": "F32", "shape": [1, 1], "data_offsets": [4, 8]}}', b"\0" * 8)
    cases["lone surrogate in a key"] = (p, "not valid UTF-8")
    raw = good.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    first, second = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    b1, e1 = header[second]["data_offsets"]
    header[second]["data_offsets"] = [b1 + 4, e1 + 4]
    p = tmp / "gap.safetensors"
    _raw_safetensors(p, header, raw[8 + n : 8 + n + b1] + b"\0" * 4 + raw[8 + n + b1 :])
    cases["gap between tensors"] = (p, "unused bytes before tensor")
    p = tmp / "trailing.safetensors"
    p.write_bytes(raw + b"junk")
    cases["bytes after the last tensor"] = (p, "bytes after the last tensor")
    for name, down, up, needle in (("rank0", (0, 4), (3, 0), "empty factors"), ("zero_d", (), (), "at least 2-D"),
                                   ("one_d", (4,), (3,), "at least 2-D")):
        p = tmp / f"{name}.safetensors"
        save_file({"lora_unet_a.lora_down.weight": torch.randn(down), "lora_unet_a.lora_up.weight": torch.randn(up), "lora_unet_a.alpha": torch.tensor(4.0)}, p)
        cases[f"{name} factors"] = (p, needle)
    p = tmp / "mid6d.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.randn(2, 4, 1, 1), "lora_unet_a.lora_up.weight": torch.randn(3, 2, 1, 1),
               "lora_unet_a.lora_mid.weight": torch.randn(2, 2, 3, 3, 1, 1)}, p)
    cases["6-D lora_mid"] = (p, "lora_mid [2, 2, 3, 3, 1, 1]")
    p = tmp / "long_key.safetensors"
    save_file({"lora_unet_" + "x" * 100_000 + ".lora_down.weight": torch.randn(2, 4)}, p)
    cases["100 KB key (message capped)"] = (p, "no up weight")
    for name, change, needle in (
        ("alpha_null", {"lora_alpha": None}, "lora_alpha must be a number"),
        ("alpha_list", {"lora_alpha": [8]}, "lora_alpha must be a number"),
        ("alpha_string", {"lora_alpha": "8"}, "lora_alpha must be a number"),
        ("alpha_huge", {"lora_alpha": 10 ** 400}, "finite number ≥ 0"),
        ("alpha_inf", {"lora_alpha": float("inf")}, "finite number ≥ 0"),
        ("alpha_negative", {"lora_alpha": -8}, "finite number ≥ 0"),
        ("r_zero", {"r": 0}, "r must be an integer"),
        ("pattern_regex", {"alpha_pattern": {"(": 4}}, "not a valid regular expression"),
        ("pattern_string", {"alpha_pattern": "q_proj"}, "alpha_pattern must be an object"),
        ("pattern_hang", {"alpha_pattern": {"(.*)*x$": 1}}, "nested repeats"),
        ("rslora_string", {"use_rslora": "false"}, "use_rslora must be true or false"),
    ):
        d = tmp / f"peft_{name}"
        shutil.copytree(EXAMPLE, d)
        config = json.loads((d / "adapter_config.json").read_text())
        (d / "adapter_config.json").write_text(json.dumps({**config, **change}))
        cases[f"adapter_config.json {name}"] = (d, needle)
    d = tmp / "peft_nested_config"
    shutil.copytree(EXAMPLE, d)
    (d / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    cases["deeply nested adapter_config.json"] = (d, "nested too deeply")
    d = tmp / "peft_bigint_config"
    shutil.copytree(EXAMPLE, d)
    (d / "adapter_config.json").write_text('{"r": 8, "lora_alpha": ' + "9" * 5000 + "}")
    cases["5,000-digit integer in adapter_config.json"] = (d, "unreadable adapter_config.json")
    for algo, weights in (("LOHA", {"base_model.model.fc.hada_w1_a": (4, 2), "base_model.model.fc.hada_w1_b": (2, 6),
                                    "base_model.model.fc.hada_w2_a": (4, 2), "base_model.model.fc.hada_w2_b": (2, 6)}),
                          ("LOKR", {"base_model.model.fc.lokr_w1": (2, 2), "base_model.model.fc.lokr_w2": (2, 3)})):
        for name, value, needle in (("null", None, "alpha must be a number"), ("negative", -1, "finite number ≥ 0"),
                                    ("inf", float("inf"), "finite number ≥ 0")):
            d = tmp / f"peft_{algo.lower()}_alpha_{name}"
            d.mkdir()
            save_file({k: torch.randn(shape) for k, shape in weights.items()}, d / "adapter_model.safetensors")
            (d / "adapter_config.json").write_text(json.dumps({"peft_type": algo, "r": 2, "alpha": value}))
            cases[f"{algo} alpha {name}"] = (d, needle)
    return cases


def test_every_hostile_file_is_a_one_line_error_with_exit_3(tmp_path):
    """One `inspect` run over every case, with a good file first and last: one stderr line per case naming
    the file and the problem (at most a few hundred characters), exit 3, the good files still reported."""
    cases = _cases(tmp_path)
    _good_lora(tmp_path / "zz_last_good.safetensors")
    targets = [str(tmp_path / "good.safetensors"), *(str(p) for p, _ in cases.values()), str(tmp_path / "zz_last_good.safetensors")]
    res = run_cli("inspect", "--json", *targets)
    assert res.returncode == 3, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == len(cases), "\n".join(lines)
    report = json.loads(res.stdout)
    assert [Path(a["source"]).name for a in report["adapters"]] == ["good.safetensors", "zz_last_good.safetensors"]
    for (label, (path, needle)), line, error in zip(cases.items(), lines, report["errors"]):
        assert line.startswith("error: ") and path.name in line and needle in line, (label, line)
        assert len(line) < 700, (label, len(line))
        assert error["source"] == str(path) and needle in error["error"], (label, error)


def test_each_hostile_file_alone_is_one_line_and_exit_3(tmp_path):
    """Three cases on their own (the batch test above covers every case's message)."""
    cases = _cases(tmp_path)
    for label in ("truncated", "lone surrogate in a key", "adapter_config.json pattern_hang"):
        path, needle = cases[label]
        res = run_cli("inspect", str(path))
        lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
        assert res.returncode == 3 and len(lines) == 1 and path.name in lines[0] and needle in lines[0], (label, res.stderr)


def test_library_raises_lolscan_errors_only(tmp_path):
    """`lolscan.load` on every case: a LolscanError (exit code 3), never another exception."""
    for label, (path, needle) in _cases(tmp_path).items():
        try:
            lolscan.load(str(path))
        except lolscan.LolscanError as exc:
            if label == "folder without adapters":  # the CLI's folder scan words this one
                needle = "not a PEFT or diffusers LoRA folder"
            assert exc.exit_code == 3 and needle in str(exc) and len(str(exc)) < 700, (label, str(exc)[:300])
        else:
            raise AssertionError(f"{label}: loaded")


def test_catastrophic_alpha_pattern_returns_at_once(tmp_path):
    """`"(.*)*x$"` backtracks for minutes when peft's composed expression meets a module name; lolscan
    refuses it before any matching, in milliseconds."""
    d = tmp_path / "hang"
    shutil.copytree(EXAMPLE, d)
    config = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps({**config, "alpha_pattern": {"(.*)*x$": 1}}))
    t0 = time.perf_counter()
    try:
        lolscan.load(str(d))
    except lolscan.InputError as exc:
        assert "nested repeats" in str(exc) and "(.*)*x$" in str(exc)
    else:
        raise AssertionError("loaded")
    assert time.perf_counter() - t0 < 2.0


def test_long_names_are_elided_in_messages(tmp_path):
    p = tmp_path / "long.safetensors"
    save_file({"lora_unet_" + "x" * 100_000 + ".lora_down.weight": torch.randn(2, 4)}, p)
    try:
        lolscan.load(str(p))
    except lolscan.InputError as exc:
        text = str(exc)
    assert "…" in text and len(text) < 500 and text.endswith("has no up weight to pair with")


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


def test_pickle_named_safetensors_is_read_with_allow_pickle(tmp_path):
    """torch.load given a path ending in .safetensors reads it as safetensors ("header too large")."""
    t = {"lora_unet_a.lora_down.weight": torch.randn(2, 4), "lora_unet_a.lora_up.weight": torch.randn(3, 2)}
    for legacy in (False, True):
        p = tmp_path / f"disguised_{legacy}.safetensors"
        torch.save(t, p, _use_new_zipfile_serialization=not legacy)
        adapter = lolscan.load(str(p), allow_pickle=True)
        torch.testing.assert_close(adapter["unet.a"].delta(), t["lora_unet_a.lora_up.weight"] @ t["lora_unet_a.lora_down.weight"])


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


def _filesystem_cases(tmp: Path) -> tuple[Path, dict[str, str]]:
    """A folder to scan holding hostile entries: {entry name: what its error says}."""
    outside = tmp / "outside"
    outside.mkdir()
    _good_lora(outside / "elsewhere.safetensors")
    (outside / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    lib = tmp / "lib"
    lib.mkdir()
    _good_lora(lib / "a_good.safetensors")
    os.symlink(lib / "a_good.safetensors", lib / "b_inside_link.safetensors")  # inside the root: read (once)
    os.symlink(outside / "passwd", lib / "c_passwd.safetensors")
    os.symlink(outside / "elsewhere.safetensors", lib / "d_out.safetensors")
    os.symlink(lib / "e_loop.safetensors", lib / "e_loop.safetensors")
    os.symlink(outside, lib / "f_dir_out")
    os.mkfifo(lib / "g_fifo.safetensors")
    peft = lib / "h_peft_devzero"
    shutil.copytree(EXAMPLE, peft)
    (peft / "adapter_config.json").unlink()
    os.symlink("/dev/zero", peft / "adapter_config.json")
    return lib, {"c_passwd.safetensors": "out of the scanned folder", "d_out.safetensors": "out of the scanned folder",
                 "e_loop.safetensors": "loops or points nowhere", "f_dir_out": "out of the scanned folder",
                 "g_fifo.safetensors": "not a regular file (a FIFO)", "h_peft_devzero": "adapter_config.json is a symbolic link out of the scanned folder"}


def test_folder_scan_stays_inside_its_root_and_refuses_fifos_and_devices(tmp_path):
    from lolscan.scan.discovery import expand

    lib, expected = _filesystem_cases(tmp_path)
    found = {Path(f.source).name: f.error for f in expand([str(lib)])}
    assert found["a_good.safetensors"] is None and "b_inside_link.safetensors" not in found  # the same file once
    for name, needle in expected.items():
        assert found[name] is not None and needle in found[name], (name, found.get(name))
    followed = {Path(f.source).name: f.error for f in expand([str(lib)], follow_symlinks=True)}
    assert followed["d_out.safetensors"] is None and followed["c_passwd.safetensors"] is None
    assert "f_dir_out" not in followed  # the linked folder is scanned (its file is d_out's: listed once)
    res = run_cli("inspect", "--json", str(lib))
    assert res.returncode == 3 and "Traceback" not in res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == len(expected), res.stderr
    for name, needle in expected.items():
        assert any(name in line and needle in line for line in lines), (name, res.stderr)
    assert "root:x" not in res.stderr and "header length" not in res.stderr  # nothing of the linked file is shown
    assert [Path(a["source"]).name for a in json.loads(res.stdout)["adapters"]] == ["a_good.safetensors"]
    res = run_cli("inspect", "--json", "--follow-symlinks", str(lib))
    errors = json.loads(res.stdout)["errors"]
    assert any("c_passwd.safetensors" in e["error"] and "over the 100000000 byte limit" in e["error"] for e in errors)
    assert any("h_peft_devzero" in e["error"] and "adapter_config.json is not a regular file" in e["error"] for e in errors)
    assert str(int.from_bytes(b"root:x:0", "little")) not in res.stderr  # the file's first bytes are not echoed as a number


def test_an_explicit_fifo_is_refused_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "pipe.safetensors")
    with pytest.raises(lolscan.InputError, match="not a regular file"):
        lolscan.load(str(tmp_path / "pipe.safetensors"))  # opening it would wait for a writer forever
