"""`lolscan inspect` end to end on real files: figures checked against dense ΔW computed independently."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import REAL, REPO


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lolscan", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


@pytest.mark.skipif(not REAL.is_dir(), reason="fixtures missing")
def test_inspect_json_on_real_peft_folder():
    folder = REAL / "gradience_tiny_lora"
    res = run_cli("inspect", str(folder), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["schema_version"] == 1 and report["errors"] == []
    (a,) = report["adapters"]
    assert a["format"] == "peft" and a["modules"] == 12 and a["rank_min"] == a["rank_max"] == 8
    assert a["family"].startswith("gpt2-style") and "768" in a["family"]
    assert a["scales"] == [2.0] and a["dtype"] == "F32"
    sha = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest().upper()
    assert a["sha256"] == sha and a["autov2"] == sha[:10]
    raw = load_file(folder / "adapter_model.safetensors")
    key = "base_model.model.transformer.h.3.attn.c_proj"
    dense = 2.0 * raw[key + ".lora_B.weight"].double() @ raw[key + ".lora_A.weight"].double()
    s = torch.linalg.svdvals(dense)
    m = a["per_module"]["transformer.h.3.attn.c_proj"]
    assert m["frobenius"] == pytest.approx(float(torch.linalg.norm(dense)), rel=1e-5)
    assert m["spectral"] == pytest.approx(float(s[0]), rel=1e-5)
    assert m["effective_rank"] == int((s > s[0] * 1e-5).sum())


def test_inspect_reports_mixed_rank_deficient_and_nonfinite(tmp_path):
    torch.manual_seed(0)
    low = torch.randn(4, 1) @ torch.randn(1, 8)  # rank-1 content stored at rank 4
    t = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": low, "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(6, 4),
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": torch.randn(2, 8), "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight": torch.randn(6, 2),
        "lora_unet_up_blocks_1_attentions_0_proj_in.lora_down.weight": torch.full((2, 8), float("nan")), "lora_unet_up_blocks_1_attentions_0_proj_in.lora_up.weight": torch.randn(6, 2),
    }
    save_file(t, tmp_path / "x.safetensors", metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4",
                                                      "ss_network_alpha": "None", "ss_base_model_version": "sd_v1",
                                                      "ss_tag_frequency": json.dumps({"10_cat": {"cat": 5, "dog": 2}})})
    res = run_cli("inspect", str(tmp_path / "x.safetensors"), "--json")
    assert res.returncode == 3, res.stderr  # NaN/Inf: reported, and bad input (as in predict)
    (a,) = json.loads(res.stdout)["adapters"]
    assert a["mixed_rank"] and (a["rank_min"], a["rank_max"]) == (2, 4)
    assert a["family"] == "sd1"
    assert a["per_module"]["unet.down_blocks.0.attentions.0.proj_in"]["effective_rank"] == 1
    assert a["nonfinite_modules"] == ["unet.up_blocks.1.attentions.0.proj_in"]
    assert a["metadata"]["ss_network_dim"] == 4 and a["metadata"]["ss_network_alpha"] is None
    assert a["metadata"]["top_tags"] == ["cat", "dog"]
    table = run_cli("inspect", str(tmp_path / "x.safetensors"), "--allow-nonfinite")
    assert table.returncode == 0 and "mixed" in table.stdout and "NaN/Inf" in table.stdout


def _nonfinite_files(tmp_path):
    """A plain kohya LoRA with a NaN (inspected without torch) and a LyCORIS LoHa with an Inf (the torch
    path), each beside a clean module."""
    torch.manual_seed(1)
    plain = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(2, 8),
             "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(6, 2),
             "lora_unet_up_blocks_1_attentions_0_proj_in.lora_down.weight": torch.randn(2, 8),
             "lora_unet_up_blocks_1_attentions_0_proj_in.lora_up.weight": torch.randn(6, 2)}
    plain["lora_unet_up_blocks_1_attentions_0_proj_in.lora_up.weight"][3, 1] = float("nan")
    save_file(plain, tmp_path / "nan_plain.safetensors", metadata={"ss_network_module": "networks.lora"})
    p = "lora_unet_down_blocks_0_resnets_0_"
    loha = {f"{p}conv1.hada_w1_a": torch.randn(8, 2), f"{p}conv1.hada_w1_b": torch.randn(2, 36),
            f"{p}conv1.hada_w2_a": torch.randn(8, 2), f"{p}conv1.hada_w2_b": torch.randn(2, 36), f"{p}conv1.alpha": torch.tensor(1.0),
            f"{p}conv2.hada_w1_a": torch.randn(8, 2), f"{p}conv2.hada_w1_b": torch.randn(2, 36),
            f"{p}conv2.hada_w2_a": torch.randn(8, 2), f"{p}conv2.hada_w2_b": torch.randn(2, 36), f"{p}conv2.alpha": torch.tensor(1.0)}
    loha[f"{p}conv2.hada_w2_b"][0, 5] = float("inf")
    save_file(loha, tmp_path / "inf_loha.safetensors", metadata={"ss_network_module": "lycoris.kohya"})
    return tmp_path / "nan_plain.safetensors", tmp_path / "inf_loha.safetensors"


@pytest.mark.parametrize("which, torch_path, module", [
    (0, False, "unet.up_blocks.1.attentions.0.proj_in"),
    (1, True, "unet.down_blocks.0.resnets.0.conv2"),
])
def test_inspect_nonfinite_is_bad_input_unless_allowed(tmp_path, which, torch_path, module):
    """NaN/Inf factors: the adapter is still reported (table and JSON), one error line names the file,
    the module and the problem, exit 3; --allow-nonfinite makes it a warning and exit 0. Both readers."""
    from helpers import run_cli_modules

    path = _nonfinite_files(tmp_path)[which]
    code, stderr, mods = run_cli_modules(["inspect", str(path), "--json"])
    assert code == 3 and ("torch" in mods) == torch_path, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == [f"error: {path}: 1 module(s) hold NaN/Inf values ({module})"], stderr
    res = run_cli("inspect", str(path), "--json")
    out = json.loads(res.stdout)
    (a,) = out["adapters"]
    assert res.returncode == 3 and a["nonfinite_modules"] == [module] and a["modules"] == 2
    assert out["errors"] == [{"source": str(path), "error": f"{path}: 1 module(s) hold NaN/Inf values ({module})"}]
    assert a["per_module"][module]["finite"] is False and a["per_module"][module]["frobenius"] is None
    table = run_cli("inspect", str(path))
    assert table.returncode == 3 and "NaN/Inf" in table.stdout and "Traceback" not in table.stderr
    allowed = run_cli("inspect", str(path), "--json", "--allow-nonfinite")
    assert allowed.returncode == 0 and json.loads(allowed.stdout)["errors"] == []
    assert [line for line in allowed.stderr.splitlines() if line.strip()] == [f"warning: {path}: 1 module(s) hold NaN/Inf values ({module})"]


def test_inspect_nonfinite_among_good_files_and_help(tmp_path):
    """One NaN adapter among good ones: all reported, exit 3 at the end; --help documents the flag and code."""
    nan_plain, _ = _nonfinite_files(tmp_path)
    good = tmp_path / "good.safetensors"
    save_file({"lora_unet_conv_in.lora_down.weight": torch.randn(2, 4), "lora_unet_conv_in.lora_up.weight": torch.randn(4, 2)}, good)
    res = run_cli("inspect", str(good), str(nan_plain), "--json")
    out = json.loads(res.stdout)
    assert res.returncode == 3 and len(out["adapters"]) == 2 and [e["source"] for e in out["errors"]] == [str(nan_plain)]
    help_text = run_cli("inspect", "--help").stdout
    assert "--allow-nonfinite" in help_text and "NaN/Inf" in help_text


def test_inspect_table_never_reads_file_text_as_markup(tmp_path):
    """Module names and metadata come from the file: '[/x]' in them is shown as it is (it raised rich's
    MarkupError in table mode: a traceback and exit 1)."""
    path = tmp_path / "markup.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in[/x].lora_down.weight": torch.randn(2, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in[/x].lora_up.weight": torch.randn(4, 2)},
              path, metadata={"ss_network_module": "networks.lora", "ss_output_name": "[red]name[/]", "ss_training_comment": ":smile: :x:"})
    res = run_cli("inspect", str(path), "--modules", "0")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert "proj.in[/x]" in res.stdout and "[red]name[/]" in res.stdout and ":smile: :x:" in res.stdout


def test_inspect_norm_beyond_float32_is_null_in_strict_json(tmp_path):
    """Finite factors whose ΔW is beyond float32's range (found by bench/fuzz.py's in-process inspect): the
    norms are Inf, as the torch path computes them; --json stays strict JSON (null), and numpy's overflow
    warning no longer reaches stderr."""
    path = tmp_path / "huge.safetensors"
    save_file({"lora_unet_conv_in.lora_down.weight": torch.full((2, 4), 3e19), "lora_unet_conv_in.lora_up.weight": torch.full((4, 2), 3e19),
               "lora_unet_conv_out.lora_down.weight": torch.randn(2, 4), "lora_unet_conv_out.lora_up.weight": torch.randn(4, 2)}, path)
    res = run_cli("inspect", str(path), "--json")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    doc = json.loads(res.stdout, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))
    m = doc["adapters"][0]["per_module"]["unet.conv_in"]
    assert m["finite"] is True and m["frobenius"] is None and m["spectral"] is None
    assert doc["adapters"][0]["per_module"]["unet.conv_out"]["frobenius"] > 0
    table = run_cli("inspect", str(path))
    assert table.returncode == 0 and table.stderr == "" and "inf" in table.stdout
