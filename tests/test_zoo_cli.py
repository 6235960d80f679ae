"""`lolscan zoo build` / `zoo summary` as a user runs them: a TOML recipe, a HF model folder, a real process."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo_toy import recipe_toml as _toml, save_tiny_hf_base, toy_recipe, write_toy_data

pytest.importorskip("peft")
pytest.importorskip("transformers")
tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lolscan", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_build_resume_and_summary(tmp_path):
    data = tmp_path / "data"
    write_toy_data(data)
    base = tmp_path / "base"
    save_tiny_hf_base(base)
    d = toy_recipe(data, n_loras=4, group_size=2)
    d["base"] = {"path": str(base), "name": "tiny-llama", "dtype": "float32"}
    recipe = tmp_path / "toy.toml"
    text = _toml(d)
    assert tomllib.loads(text) == d  # the helper wrote the recipe we meant
    recipe.write_text(text)
    out = tmp_path / "zoo"
    r1 = _run("zoo", "build", str(recipe), str(out), "--max-groups", "1")
    assert r1.returncode == 0, r1.stderr
    assert "2/4 adapters, stopped early" in r1.stderr
    r2 = _run("zoo", "build", str(recipe), str(out))
    assert r2.returncode == 0, r2.stderr
    assert "4/4 adapters, complete" in r2.stderr and "group 2:" not in r2.stderr  # one group left, not two
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all((out / r["path"] / "adapter_model.safetensors").is_file() for r in rows)
    s = _run("zoo", "summary", str(out), "--json")
    assert s.returncode == 0, s.stderr
    info = json.loads(s.stdout)
    assert info["rows"] == 4 and "val_loss" in info["labels"]
    vals = [r["val_loss"] for r in rows]
    assert abs(info["labels"]["val_loss"]["min"] - min(vals)) < 1e-9
    assert all(r["finite"] is True for r in rows) and info["labels"]["val_loss"]["non_finite"] == 0
    # a diverged LoRA's NaN label is counted, not allowed to break the statistics
    nan_zoo = tmp_path / "nan.jsonl"
    nan_zoo.write_text("".join(json.dumps({**r, "val_loss": float("nan")} if i == 0 else r) + "\n"
                               for i, r in enumerate(rows)))
    s = _run("zoo", "summary", str(nan_zoo), "--json")
    assert s.returncode == 0, s.stderr
    st = json.loads(s.stdout)["labels"]["val_loss"]
    assert st["non_finite"] == 1 and abs(st["mean"] - sum(vals[1:]) / 3) < 1e-9
    # rebuilt at training cost with the labels of the first build: the same manifest, bytes and all
    r4 = _run("zoo", "build", str(recipe), str(tmp_path / "again"), "--labels-from", str(out / "manifest.jsonl"),
              "--check-every", "2")
    assert r4.returncode == 0, r4.stderr
    assert "1 group(s) labelled here and compared" in r4.stderr and "(labels from manifest)" in r4.stderr
    assert (tmp_path / "again" / "manifest.jsonl").read_bytes() == (out / "manifest.jsonl").read_bytes()
    # a manifest the build does not reproduce: bad input (exit 3), one line naming the file and the adapter
    r5 = _run("zoo", "build", str(recipe), str(tmp_path / "z3"), "--labels-from", str(nan_zoo))
    assert r5.returncode == 3 and "Traceback" not in r5.stderr, r5.stderr
    assert f"nan.jsonl: {rows[0]['id']} val_loss = nan, measured here" in " ".join(r5.stderr.split())
    assert not (tmp_path / "z3" / "manifest.jsonl").read_text()
    # a recipe that cannot be read is a usage error (exit 2) with one line, no traceback
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [\n")
    r3 = _run("zoo", "build", str(bad), str(tmp_path / "z2"))
    assert r3.returncode == 2 and "Traceback" not in r3.stderr and "bad.toml" in r3.stderr


def test_convert_base_writes_a_loadable_copy_and_build_accepts_it(tmp_path):
    """`zoo convert-base` stores the base once; a recipe naming a GGUF file still loads the converted folder."""
    from transformers import AutoModelForCausalLM

    base = tmp_path / "base"
    save_tiny_hf_base(base)
    d = toy_recipe(tmp_path, n_loras=2, group_size=2)
    d["base"] = {"path": str(base), "name": "tiny-llama", "dtype": "float32"}
    recipe = tmp_path / "toy.toml"
    recipe.write_text(_toml(d))
    out = tmp_path / "converted"
    r = _run("zoo", "convert-base", str(recipe), str(out), "--dtype", "bfloat16")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "converted.partial").exists()
    a = AutoModelForCausalLM.from_pretrained(base)
    b = AutoModelForCausalLM.from_pretrained(out)
    assert b.dtype == torch.bfloat16
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa.to(torch.bfloat16), pb)
    again = _run("zoo", "convert-base", str(recipe), str(out))
    assert again.returncode == 2 and "exists" in again.stderr
    # a recipe that names a GGUF file loads a converted folder (no such file in it) as a plain HF model
    from lolscan.zoo.build import load_base

    m, _ = load_base({"path": "unused", "gguf_file": "model.gguf", "dtype": "float32"}, path_override=str(out))
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in a.parameters())
    with pytest.raises(Exception, match="neither model.gguf nor a config.json"):
        load_base({"path": str(tmp_path), "gguf_file": "model.gguf"})
