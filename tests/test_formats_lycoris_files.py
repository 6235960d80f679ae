"""LyCORIS files in kohya naming are read end to end into exact factors."""
from __future__ import annotations

import torch
from safetensors.torch import save_file

import lolscan


def test_kohya_loha_and_lokr_files(tmp_path):
    torch.manual_seed(0)
    t = {
        # LoHa on a linear 6×10, r = 3, alpha 1.5 → s = 0.5
        "lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": torch.randn(6, 3),
        "lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_b": torch.randn(3, 10),
        "lora_unet_down_blocks_0_attentions_0_proj_in.hada_w2_a": torch.randn(6, 3),
        "lora_unet_down_blocks_0_attentions_0_proj_in.hada_w2_b": torch.randn(3, 10),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(1.5),
        # LoKr on a linear (2·4)×(3·5): full w1 [2,3], decomposed w2 [4,r=2]·[2,5], alpha 4 → s = 2
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lokr_w1": torch.randn(2, 3),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lokr_w2_a": torch.randn(4, 2),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lokr_w2_b": torch.randn(2, 5),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(4.0),
    }
    save_file(t, tmp_path / "lycoris.safetensors", metadata={"ss_network_module": "lycoris.kohya"})
    adapter = lolscan.load(str(tmp_path / "lycoris.safetensors"))
    assert adapter.format == "lycoris"
    p = "lora_unet_down_blocks_0_attentions_0_proj_in."
    loha = 0.5 * (t[p + "hada_w1_a"] @ t[p + "hada_w1_b"]) * (t[p + "hada_w2_a"] @ t[p + "hada_w2_b"])
    q = "lora_te_text_model_encoder_layers_0_mlp_fc1."
    lokr = 2.0 * torch.kron(t[q + "lokr_w1"], t[q + "lokr_w2_a"] @ t[q + "lokr_w2_b"])
    a = adapter["unet.down_blocks.0.attentions.0.proj_in"]
    b = adapter["text_encoder.text_model.encoder.layers.0.mlp.fc1"]
    assert (a.algo, a.rank, b.algo) == ("loha", 9, "lokr")
    torch.testing.assert_close(a.delta(), loha, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.delta(), lokr, atol=1e-5, rtol=1e-4)
