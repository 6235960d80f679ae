"""`lolscan inspect` without torch (`lolscan.inspect_fast`): the same report as the torch path
(`lolscan.load` + `inspection.inspect_adapter`) on every plain LoRA file, and no torch import."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lolscan.cli.inspect_cmd import _inspect_full
from lolscan.inspect_fast import inspect_light

from helpers import REAL, REPO, run_cli_modules


def _same(a, b, where: str = "") -> None:
    """Equal JSON, floats to 1e-5 relative."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), where
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-30), (where, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, list(a), list(b) if isinstance(b, dict) else b)
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _both(source: str | Path) -> dict:
    fast = inspect_light(str(source))
    assert fast is not None, f"the fast path declined {source}"
    full = _inspect_full(str(source), False, {})
    _same(json.loads(json.dumps(fast)), json.loads(json.dumps(full)))
    return fast


REAL_PLAIN = ["catundchat_sd15_pytorch_lora_weights.safetensors", "gradience_tiny_lora",
              "gradience_tiny_lora/adapter_model.safetensors"]


@pytest.mark.skipif(not REAL.is_dir(), reason="fixtures missing")
@pytest.mark.parametrize("name", REAL_PLAIN)
def test_real_plain_fixtures_give_the_torch_paths_report(name):
    report = _both(REAL / name)
    assert report["modules"] > 0 and "sha256" in report


@pytest.mark.skipif(not REAL.is_dir(), reason="fixtures missing")
def test_other_formats_are_left_to_the_torch_path():
    assert inspect_light(str(REAL / "cloneofsimo_lora_disney.safetensors")) is None
    assert inspect_light(str(REAL / "cloneofsimo_analog_svd_rank4.safetensors")) is None
    assert inspect_light("hf://someone/some-lora") is None


_KOHYA = [("lora_unet_down_blocks_0_attentions_0_proj_in", 32, 24), ("lora_unet_mid_block_attentions_0_proj_out", 32, 24),
          ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 16, 16)]


def _kohya(path: Path, dtype: torch.dtype, *, alpha: float | None, ranks=(4, 4, 2), extras: bool = False, nan: bool = False,
           metadata: dict | None = None) -> Path:
    g = torch.Generator().manual_seed(7)
    t = {}
    for (key, n, m), r in zip(_KOHYA, ranks):
        t[f"{key}.lora_down.weight"] = torch.randn(r, m, generator=g).to(dtype)
        t[f"{key}.lora_up.weight"] = torch.randn(n, r, generator=g).to(dtype)
        if alpha is not None:
            t[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float16 if dtype == torch.bfloat16 else dtype)
    t["lora_unet_conv_in.lora_down.weight"] = torch.randn(3, 4, 3, 3, generator=g).to(dtype)  # conv, no alpha
    t["lora_unet_conv_in.lora_up.weight"] = torch.randn(8, 3, 1, 1, generator=g).to(dtype)
    if extras:
        t["lora_unet_conv_out.alpha"] = torch.tensor(0.0)  # an alpha alone (and 0)
        t["some_other_thing"] = torch.zeros(3, 2, dtype=torch.float32)  # fits no module
        t["model.layers.0.foo.lora_down.weight"] = torch.zeros(2, 4)  # not a kohya module
        t["model.layers.0.foo.lora_up.weight"] = torch.zeros(4, 2)
    if nan:
        t[f"{_KOHYA[0][0]}.lora_up.weight"].view(-1)[:2] = torch.tensor([float("nan"), float("inf")], dtype=dtype)
    save_file(t, str(path), metadata=metadata if metadata is not None else {"ss_network_module": "networks.lora"})
    return path


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [None, 2.0, -3.0, 0.0])
def test_kohya_files_every_dtype_and_alpha(tmp_path, dtype, alpha):
    _both(_kohya(tmp_path / "k.safetensors", dtype, alpha=alpha))


def test_kohya_extras_nonfinite_metadata_and_mixed_rank(tmp_path):
    low = tmp_path / "x.safetensors"
    md = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "None", "ss_base_model_version": "sd_v1",
          "ss_tag_frequency": json.dumps({"10_cat": {"cat": 5, "dog": 2}}), "modelspec.title": "t"}
    r = _both(_kohya(low, torch.float32, alpha=1.0, ranks=(4, 2, 8), extras=True, nan=True, metadata=md))
    assert r["nonfinite_modules"] and r["mixed_rank"] and r["extra_tensors"] and r["warnings"] and r["metadata"]["top_tags"]
    r = _both(_kohya(tmp_path / "l.safetensors", torch.float16, alpha=4.0, metadata={"ss_network_module": "lycoris.kohya"}))
    assert r["format"] == "lycoris"


def test_float64_beyond_float32_and_rank_deficient(tmp_path):
    t = {"lora_unet_a_proj_in.lora_down.weight": torch.full((2, 4), 1e300, dtype=torch.float64),
         "lora_unet_a_proj_in.lora_up.weight": torch.ones(4, 2, dtype=torch.float64),
         "lora_unet_b_proj_in.lora_down.weight": (torch.randn(4, 1) @ torch.randn(1, 8)).double(),
         "lora_unet_b_proj_in.lora_up.weight": torch.randn(6, 4, dtype=torch.float64),
         "lora_unet_b_proj_in.alpha": torch.tensor(3.0, dtype=torch.float64)}
    save_file(t, str(tmp_path / "f.safetensors"))
    r = _both(tmp_path / "f.safetensors")
    assert len(r["nonfinite_modules"]) == 1  # finite in the file, Inf once converted to float32
    assert r["per_module"][list(r["per_module"])[1]]["effective_rank"] == 1


def _peft_tensors(ranks=(8, 8, 4), dtype=torch.float32, alpha: bool = False) -> dict:
    g = torch.Generator().manual_seed(3)
    t = {}
    for i, r in enumerate(ranks):
        for proj, (n, m) in (("q_proj", (64, 64)), ("v_proj", (16, 64))):
            key = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            t[f"{key}.lora_A.weight"] = torch.randn(r, m, generator=g).to(dtype)
            t[f"{key}.lora_B.weight"] = torch.randn(n, r, generator=g).to(dtype)
            if alpha:
                t[f"{key}.alpha"] = torch.tensor(float(2 * r))
    return t


def test_peft_folders_bare_weights_and_diffusers(tmp_path):
    folder = tmp_path / "peft"
    folder.mkdir()
    save_file(_peft_tensors(dtype=torch.bfloat16), str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": True,
                                                            "target_modules": ["q_proj", "v_proj"],
                                                            "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M"}))
    r = _both(folder)
    assert r["format"] == "peft" and any("rank_pattern" in w for w in r["warnings"])
    _both(folder / "adapter_model.safetensors")
    bare = tmp_path / "bare.safetensors"
    save_file(_peft_tensors(), str(bare))
    assert any("no adapter_config.json" in w for w in _both(bare)["warnings"])
    save_file(_peft_tensors(alpha=True, dtype=torch.float16), str(tmp_path / "alpha.safetensors"))
    _both(tmp_path / "alpha.safetensors")
    g = torch.Generator().manual_seed(5)
    d = {}
    for blk in range(2):
        key = f"unet.down_blocks.0.attentions.{blk}.transformer_blocks.0.attn2.to_k"
        d[f"{key}.lora_A.weight"] = torch.randn(4, 768, generator=g)
        d[f"{key}.lora_B.weight"] = torch.randn(320, 4, generator=g)
    save_file(d, str(tmp_path / "diff.safetensors"))
    assert _both(tmp_path / "diff.safetensors")["family"] == "sd1"


def test_inspecting_a_plain_kohya_file_does_not_import_torch(tmp_path):
    path = _kohya(tmp_path / "k.safetensors", torch.float16, alpha=2.0)
    for extra in ([], ["--json"]):
        code, stderr, mods = run_cli_modules(["inspect", str(path), *extra])
        assert code == 0, stderr
        assert "torch" not in mods and "lolscan.inspect_fast" in mods, extra


def test_cli_output_is_the_same_on_both_paths(tmp_path, monkeypatch):
    """The table and the JSON of the CLI, with the fast path and with it switched off."""
    path = _kohya(tmp_path / "k.safetensors", torch.float32, alpha=2.0, extras=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    outs = []
    for off in (False, True):
        prefix = "import lolscan.inspect_fast as f; f.inspect_light = lambda s: None\n" if off else ""
        for extra in ([], ["--json"]):
            code = prefix + (f"import sys; sys.argv = ['lolscan', 'inspect', {str(path)!r}, *{extra!r}]\n"
                             "from lolscan.cli.app import main\nmain()")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
            assert out.returncode == 0, out.stderr
            outs.append(out.stdout)
    assert outs[0] == outs[2]  # the tables (4 significant digits)
    _same(json.loads(outs[1]), json.loads(outs[3]))
