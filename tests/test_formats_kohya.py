"""kohya-family details: alpha rules, Tucker LoCon, DoRA scale orientation, old diffusers text-encoder keys."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import lolscan

UNET = "lora_unet_down_blocks_0_resnets_0_conv1"


def test_alpha_rules(tmp_path):
    torch.manual_seed(0)
    down, up = torch.randn(4, 6), torch.randn(5, 4)
    cases = {"none": None, "half": torch.tensor(2.0, dtype=torch.bfloat16), "zero": torch.tensor(0.0), "one_elem": torch.tensor([8.0])}
    expected = {"none": 1.0, "half": 0.5, "zero": 1.0, "one_elem": 2.0}
    for label, alpha in cases.items():
        t = {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": down, "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": up}
        if alpha is not None:
            t["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"] = alpha
        save_file(t, tmp_path / f"{label}.safetensors")
        a = lolscan.load(str(tmp_path / f"{label}.safetensors"))
        layer = a["text_encoder.text_model.encoder.layers.0.mlp.fc1"]
        torch.testing.assert_close(layer.delta(), expected[label] * up @ down, atol=1e-5, rtol=1e-5)
        assert (label == "zero") == any("alpha is 0" in w for w in a.warnings)


def test_tucker_locon_matches_lycoris_rebuild(tmp_path):
    torch.manual_seed(0)
    r, cin, cout = 3, 4, 5
    down, mid, up = torch.randn(r, cin, 1, 1), torch.randn(r, r, 3, 3), torch.randn(cout, r, 1, 1)
    save_file({f"{UNET}.lora_down.weight": down, f"{UNET}.lora_mid.weight": mid, f"{UNET}.lora_up.weight": up,
               f"{UNET}.alpha": torch.tensor(6.0)}, tmp_path / "locon.safetensors")
    layer = lolscan.load(str(tmp_path / "locon.safetensors"))["unet.down_blocks.0.resnets.0.conv1"]
    # LyCORIS rebuild_tucker: einsum('i j k l, j r, i p -> p r k l', mid, down, up)
    dense = torch.einsum("ijkl,jr,ip->prkl", mid, down.flatten(1), up.flatten(1).T) * (6.0 / r)
    assert layer.shape == (cout, cin, 3, 3) and layer.algo == "locon-tucker"
    torch.testing.assert_close(layer.delta(), dense.reshape(cout, -1), atol=1e-5, rtol=1e-5)


def test_dora_scale_orientation(tmp_path):
    torch.manual_seed(0)
    down, up = torch.randn(2, 6), torch.randn(5, 2)
    for label, scale, axis in (("out", torch.rand(5, 1), "out"), ("in", torch.rand(1, 6), "in")):
        save_file({"lora_unet_a_proj_in.lora_down.weight": down, "lora_unet_a_proj_in.lora_up.weight": up,
                   "lora_unet_a_proj_in.dora_scale": scale}, tmp_path / f"{label}.safetensors")
        layer = next(iter(lolscan.load(str(tmp_path / f"{label}.safetensors")).layers.values()))
        assert layer.dora_axis == axis and not layer.exact
        torch.testing.assert_close(layer.magnitude, scale.reshape(-1))


def test_old_diffusers_text_encoder_keys(tmp_path):
    torch.manual_seed(0)
    d, u = torch.randn(2, 8), torch.randn(8, 2)
    save_file({"text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.down.weight": d,
               "text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.up.weight": u,
               "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight": d.clone(),
               "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight": u.clone(),
               "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight": d.clone(),
               "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight": u.clone()}, tmp_path / "old.safetensors")
    a = lolscan.load(str(tmp_path / "old.safetensors"))
    assert set(a) == {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
                      "text_encoder.text_model.encoder.layers.0.mlp.fc1",
                      "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0"}
    for layer in a.layers.values():
        torch.testing.assert_close(layer.delta(), u @ d, atol=1e-5, rtol=1e-5)


def test_a1111_scale_tensor_overrides_alpha(tmp_path):
    down, up = torch.randn(2, 6), torch.randn(5, 2)
    save_file({"lora_unet_a_proj_in.lora_down.weight": down, "lora_unet_a_proj_in.lora_up.weight": up,
               "lora_unet_a_proj_in.alpha": torch.tensor(1.0), "lora_unet_a_proj_in.scale": torch.tensor(3.0)}, tmp_path / "s.safetensors")
    layer = next(iter(lolscan.load(str(tmp_path / "s.safetensors")).layers.values()))
    torch.testing.assert_close(layer.delta(), 3.0 * up @ down, atol=1e-5, rtol=1e-5)


def test_header_length_starting_with_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    import json
    import struct

    down, up = torch.randn(2, 6), torch.randn(5, 2)
    header = {"lora_unet_a_proj_in.lora_down.weight": {"dtype": "F32", "shape": [2, 6], "data_offsets": [0, 48]},
              "lora_unet_a_proj_in.lora_up.weight": {"dtype": "F32", "shape": [5, 2], "data_offsets": [48, 88]}}
    blob = json.dumps(header).encode()
    blob += b" " * (0x180 - len(blob))  # header length 384 = 0x0180: first byte 0x80, like a pickle's
    path = tmp_path / "padded.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + down.numpy().tobytes() + up.numpy().tobytes())
    assert path.read_bytes()[0] == 0x80
    layer = next(iter(lolscan.load(str(path)).layers.values()))
    torch.testing.assert_close(layer.delta(), up @ down, atol=1e-5, rtol=1e-5)


def test_flux_split_qkv_is_flagged_and_scored_as_loaders_do(tmp_path):
    torch.manual_seed(0)
    r, hidden = 2, 6
    up = torch.zeros(3 * hidden, 3 * r)
    for i in range(3):
        up[i * hidden:(i + 1) * hidden, i * r:(i + 1) * r] = torch.randn(hidden, r)
    down = torch.randn(3 * r, hidden)
    name = "lora_unet_double_blocks_0_img_attn_qkv"
    save_file({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(4.0)}, tmp_path / "flux.safetensors")
    a = lolscan.load(str(tmp_path / "flux.safetensors"))
    layer = a["transformer.double_blocks.0.img_attn.qkv"]
    torch.testing.assert_close(layer.delta(), (4.0 / (3 * r)) * up @ down, atol=1e-5, rtol=1e-5)
    assert any("split_qkv" in w and "alpha/2" in w for w in a.warnings)
    # A dense (not block-diagonal) up weight is an ordinary LoRA: no note.
    save_file({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": torch.randn(3 * hidden, 3 * r), f"{name}.alpha": torch.tensor(4.0)}, tmp_path / "dense.safetensors")
    assert not any("split_qkv" in w for w in lolscan.load(str(tmp_path / "dense.safetensors")).warnings)


def test_grouped_conv_lora_is_refused_clearly(tmp_path):
    save_file({"base_model.model.conv.lora_A.weight": torch.randn(4, 3, 3, 3),
               "base_model.model.conv.lora_B.weight": torch.randn(8, 2, 1, 1)}, tmp_path / "g.safetensors")
    import pytest

    with pytest.raises(lolscan.UnsupportedFormat, match="grouped-convolution"):
        lolscan.load(str(tmp_path / "g.safetensors"))


def test_diffusers_unet_names_under_kohya_underscores_keeping_the_unet_prefix(tmp_path):
    """``lora_unet_unet_down_blocks_0_…_attn1_to_k_lora_down.weight`` (kohya underscores over diffusers'
    attention-processor names, the ``unet`` prefix kept): read, names mapped as diffusers' old
    processor names are (``to_out`` → ``to_out.0``), ΔW = up @ down (no alpha: scale 1)."""
    g = torch.Generator().manual_seed(5)
    mods = {"down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k": ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k", 32, 32),
            "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out": ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", 32, 32),
            "mid_block_attentions_0_transformer_blocks_0_attn2_to_v": ("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v", 64, 24)}
    t = {}
    for key, (_, n, m) in mods.items():
        t[f"lora_unet_unet_{key}_lora_down.weight"] = torch.randn(4, m, generator=g)
        t[f"lora_unet_unet_{key}_lora_up.weight"] = torch.randn(n, 4, generator=g)
    save_file(t, tmp_path / "u.safetensors")
    adapter = lolscan.load(str(tmp_path / "u.safetensors"))
    assert set(adapter) == {name for name, _, _ in mods.values()}
    for key, (name, n, m) in mods.items():
        want = t[f"lora_unet_unet_{key}_lora_up.weight"] @ t[f"lora_unet_unet_{key}_lora_down.weight"]
        torch.testing.assert_close(adapter[name].delta(), want, rtol=1e-6, atol=1e-6)


def test_down_up_pairs_with_unknown_module_names_are_counted_in_the_error(tmp_path):
    t = {}
    for i in range(3):
        t[f"lora_foo_blk_{i}_to_k.lora_down.weight"] = torch.randn(4, 8)
        t[f"lora_foo_blk_{i}_to_k.lora_up.weight"] = torch.randn(8, 4)
    save_file(t, tmp_path / "w.safetensors", metadata={"ss_network_module": "networks.lora"})
    with pytest.raises(lolscan.UnsupportedFormat, match=r"found 3 down/up pairs whose module names were not recognised \(e\.g\. 'lora_foo_blk_0"):
        lolscan.load(str(tmp_path / "w.safetensors"))
