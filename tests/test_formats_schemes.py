"""The same adapter written in different key schemes gives identical canonical names and ΔW."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import lolscan

from helpers import REAL
SD15 = REAL / "catundchat_sd15_pytorch_lora_weights.safetensors"


def _same(a, b):
    assert list(a) == list(b) or set(a) == set(b)
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name].delta(), b[name].delta(), atol=1e-6, rtol=1e-5)


def _sd15_modules() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """diffusers module path → (up, down), read straight from the old attn-processor keys."""
    raw = load_file(SD15)
    out = {}
    for key, down in raw.items():
        if key.endswith("_lora.down.weight"):
            head, proc = key[: -len("_lora.down.weight")].split(".processor.")
            path = f"{head}.{proc}" + (".0" if proc == "to_out" else "")
            out[path] = (raw[key.replace(".down.", ".up.")], down)
    return out


@pytest.mark.skipif(not SD15.is_file(), reason="fixture missing")
def test_sd15_in_kohya_diffusers_peft_and_old_keys(tmp_path):
    modules = _sd15_modules()
    # kohya: module path with dots → underscores, alpha 2 at rank 4 (s = 0.5): up scaled by 2 to keep ΔW.
    kohya = {}
    for path, (up, down) in modules.items():
        stem = "lora_unet_" + path.replace(".", "_")
        kohya[f"{stem}.lora_down.weight"] = down.half()
        kohya[f"{stem}.lora_up.weight"] = (up * 2).half()
        kohya[f"{stem}.alpha"] = torch.tensor(2.0, dtype=torch.float16)
    # diffusers PEFT-style keys with lora_adapter_metadata: r=4, alpha=8 (s = 2): up halved.
    peft_style = {}
    for path, (up, down) in modules.items():
        peft_style[f"unet.{path}.lora_A.weight"] = down
        peft_style[f"unet.{path}.lora_B.weight"] = up / 2
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 8, "unet.peft_type": "LORA"})}
    save_file(kohya, tmp_path / "kohya.safetensors")
    save_file(peft_style, tmp_path / "diffusers.safetensors", metadata=meta)
    # fp16 storage of the kohya copy: compare it against an fp16-rounded original
    rounded = {}
    for path, (up, down) in modules.items():
        rounded[f"{path}.lora.down.weight"] = down.half().float()
        rounded[f"{path}.lora.up.weight"] = (up * 2).half().float() / 2
    save_file(rounded, tmp_path / "rounded.safetensors")

    original = lolscan.load(str(SD15))
    as_kohya = lolscan.load(str(tmp_path / "kohya.safetensors"))
    as_diffusers = lolscan.load(str(tmp_path / "diffusers.safetensors"))
    assert (as_kohya.format, as_diffusers.format) == ("kohya", "diffusers")
    _same(original, as_diffusers)
    _same(lolscan.load(str(tmp_path / "rounded.safetensors")), as_kohya)
    assert {layer.alpha for layer in as_kohya.layers.values()} == {2.0}


def test_sdxl_kohya_sgm_names_match_diffusers_converter(tmp_path):
    """kohya trains SDXL on SGM block names; diffusers' own converter is the oracle for the mapping."""
    conv = pytest.importorskip("diffusers.loaders.lora_conversion_utils")
    names = [
        "input_blocks_4_1_transformer_blocks_0_attn1_to_q", "input_blocks_4_1_proj_in",
        "input_blocks_8_1_transformer_blocks_9_attn2_to_v", "middle_block_1_transformer_blocks_3_attn2_to_k",
        "output_blocks_0_1_transformer_blocks_9_ff_net_2", "output_blocks_5_1_transformer_blocks_1_attn1_to_out_0",
        "input_blocks_7_0_in_layers_2", "output_blocks_2_2_conv", "input_blocks_3_0_op", "middle_block_2_emb_layers_1",
        "middle_block_0_out_layers_3", "output_blocks_8_0_skip_connection", "time_embed_0", "label_emb_0_2",
    ]
    torch.manual_seed(0)
    kohya = {}
    for i, n in enumerate(names):
        r = 2 + i % 3
        kohya[f"lora_unet_{n}.lora_down.weight"] = torch.randn(r, 6)
        kohya[f"lora_unet_{n}.lora_up.weight"] = torch.randn(5, r)
        kohya[f"lora_unet_{n}.alpha"] = torch.tensor(float(r))  # alpha = rank: s = 1 in both schemes
    kohya["lora_te2_text_model_encoder_layers_3_mlp_fc1.lora_down.weight"] = torch.randn(2, 6)
    kohya["lora_te2_text_model_encoder_layers_3_mlp_fc1.lora_up.weight"] = torch.randn(5, 2)
    kohya["lora_te1_text_model_encoder_layers_0_self_attn_out_proj.lora_down.weight"] = torch.randn(2, 6)
    kohya["lora_te1_text_model_encoder_layers_0_self_attn_out_proj.lora_up.weight"] = torch.randn(5, 2)
    mapped = conv._maybe_map_sgm_blocks_to_diffusers({k: v.clone() for k, v in kohya.items()}, SimpleNamespace(layers_per_block=2))
    converted, _alphas = conv._convert_non_diffusers_lora_to_diffusers(mapped)
    save_file(kohya, tmp_path / "kohya.safetensors")
    save_file({k: v.contiguous() for k, v in converted.items()}, tmp_path / "diffusers.safetensors")
    a = lolscan.load(str(tmp_path / "kohya.safetensors"))
    b = lolscan.load(str(tmp_path / "diffusers.safetensors"))
    assert len(a) == len(names) + 2
    _same(a, b)
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q" in a
    assert "text_encoder_2.text_model.encoder.layers.3.mlp.fc1" in a


def test_peft_keys_with_and_without_wrapper_and_default(tmp_path):
    torch.manual_seed(0)
    A, B = torch.randn(3, 8), torch.randn(6, 3)
    variants = {
        "wrapped": {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": A, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": B},
        "bare": {"model.layers.0.self_attn.q_proj.lora_A.weight": A, "model.layers.0.self_attn.q_proj.lora_B.weight": B},
        "default": {"model.layers.0.self_attn.q_proj.lora_A.default.weight": A, "model.layers.0.self_attn.q_proj.lora_B.default.weight": B},
    }
    loaded = []
    for name, tensors in variants.items():
        save_file(tensors, tmp_path / f"{name}.safetensors")
        loaded.append(lolscan.load(str(tmp_path / f"{name}.safetensors")))
    for other in loaded[1:]:
        _same(loaded[0], other)
    torch.testing.assert_close(loaded[0]["model.layers.0.self_attn.q_proj"].delta(), B @ A)  # no config: s = 1
