"""PEFT adapters read by lolscan must reproduce the delta that peft itself merges into the base weights."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import lolscan  # noqa: E402

ATOL = 1e-5


def _tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


def _tiny_gpt2():
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg)


class TinyConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(self.conv1(self.conv(x)).mean((2, 3)))


def _merged_deltas(base: nn.Module, lora_cfg, tmp_path, *, scramble_magnitude: bool = False):
    """Wrap `base` with peft, randomise the adapter, save it; return (saved folder, {module: merged − original})."""
    original = {k: v.detach().clone() for k, v in base.state_dict().items()}
    model = peft.get_peft_model(copy.deepcopy(base), lora_cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(tag in name for tag in ("lora_", "hada_", "lokr_")):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if scramble_magnitude and "magnitude" in name else 0.0))
    out = tmp_path / "adapter"
    model.save_pretrained(out)
    merged = model.merge_and_unload().state_dict()
    deltas = {k[: -len(".weight")]: merged[k] - original[k] for k in original if k.endswith(".weight") and not torch.equal(merged[k], original[k])}
    return out, deltas, original


def _check_exact(adapter, deltas, *, transpose: set[str] = frozenset()):
    assert set(adapter) == set(deltas), set(adapter) ^ set(deltas)
    for name, delta in deltas.items():
        layer = adapter[name]
        got = layer.delta()
        if layer.kind == "conv":
            delta = delta.reshape(delta.shape[0], -1)
        if name.rsplit(".", 1)[-1] in transpose:
            delta = delta.T  # GPT-2 Conv1D stores W as [in, out]; lolscan reports ΔW as [out, in]
        torch.testing.assert_close(got, delta.float(), atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
             rank_pattern={"k_proj": 2, "down_proj": 6}, alpha_pattern={"v_proj": 3}),
        dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "gate_proj"], rank_pattern={"q_proj": 2}),
        dict(r=3, lora_alpha=5, target_modules=["embed_tokens", "v_proj"]),
    ],
    ids=["qv", "mixed-rank-pattern", "rslora", "embedding"],
)
def test_llama_lora_equals_peft_merge(tmp_path, kwargs):
    cfg = peft.LoraConfig(init_lora_weights=False, **kwargs)
    folder, deltas, _ = _merged_deltas(_tiny_llama(), cfg, tmp_path)
    adapter = lolscan.load(str(folder))
    assert adapter.format == "peft"
    _check_exact(adapter, deltas)
    if "rank_pattern" in kwargs:
        assert adapter.mixed_rank
        for module, rank in kwargs["rank_pattern"].items():
            prefix = "mlp" if module in ("down_proj", "gate_proj", "up_proj") else "self_attn"
            assert adapter[f"model.layers.0.{prefix}.{module}"].rank == rank


def test_gpt2_conv1d_fan_in_fan_out(tmp_path):
    cfg = peft.LoraConfig(init_lora_weights=False, r=4, lora_alpha=16, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)
    folder, deltas, _ = _merged_deltas(_tiny_gpt2(), cfg, tmp_path)
    adapter = lolscan.load(str(folder))
    _check_exact(adapter, deltas, transpose={"c_attn", "c_proj"})
    assert adapter["transformer.h.0.attn.c_attn"].n == 96  # [out, in] orientation: 3·32 outputs


def test_conv_lora(tmp_path):
    cfg = peft.LoraConfig(init_lora_weights=False, r=3, lora_alpha=6, target_modules=["conv", "conv1", "fc"], alpha_pattern={"conv": 9})
    folder, deltas, _ = _merged_deltas(TinyConvNet(), cfg, tmp_path)
    adapter = lolscan.load(str(folder))
    _check_exact(adapter, deltas)
    conv = adapter["conv"]
    assert conv.kind == "conv" and conv.shape == (8, 3, 3, 3) and conv.V.shape == (27, 3)
    # alpha_pattern "conv" must hit `conv` but not `conv1` (PEFT matches the whole last component)
    assert conv.alpha == 9 and adapter["conv1"].alpha == 6


def test_dora_low_rank_part_and_magnitude_reproduce_merge(tmp_path):
    cfg = peft.LoraConfig(init_lora_weights=False, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True)
    folder, deltas, original = _merged_deltas(_tiny_llama(), cfg, tmp_path, scramble_magnitude=True)
    adapter = lolscan.load(str(folder))
    assert set(adapter) == set(deltas)
    for name, delta in deltas.items():
        layer = adapter[name]
        assert not layer.exact and layer.dora_axis == "out"
        W = original[name + ".weight"].double()
        low = layer.delta().double()
        # DoRA: W' = diag(m / ‖W + sBA‖_row) (W + sBA)
        norm = torch.linalg.vector_norm(W + low, dim=1, keepdim=True)
        merged = layer.magnitude.double()[:, None] / norm * (W + low)
        torch.testing.assert_close(merged - W, delta.double(), atol=1e-5, rtol=1e-4)


def test_peft_weights_file_alone_uses_sibling_config(tmp_path):
    cfg = peft.LoraConfig(init_lora_weights=False, r=2, lora_alpha=7, target_modules=["q_proj"])
    folder, deltas, _ = _merged_deltas(_tiny_llama(), cfg, tmp_path)
    adapter = lolscan.load(str(folder / "adapter_model.safetensors"))
    _check_exact(adapter, deltas)


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_peft_loha_lokr_equal_peft_merge(tmp_path, kind):
    if kind == "loha":
        cfg = peft.LoHaConfig(r=3, alpha=6, target_modules=["q_proj", "v_proj"], init_weights=False)
    else:
        cfg = peft.LoKrConfig(r=3, alpha=6, target_modules=["q_proj", "v_proj"], init_weights=False, decompose_factor=4)
    folder, deltas, _ = _merged_deltas(_tiny_llama(), cfg, tmp_path)
    adapter = lolscan.load(str(folder))
    _check_exact(adapter, deltas)
    assert {layer.algo for layer in adapter.layers.values()} == {kind}
