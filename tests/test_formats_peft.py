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


class TinyLoKrNet(nn.Module):
    """Linear, Conv2d, Conv1d (k=3 and k=1): the layer types peft's LoKr supports."""

    def __init__(self, wide: bool = False):
        super().__init__()
        w = 2 if wide else 1
        self.fc = nn.Linear(24, 16)
        self.conv = nn.Conv2d(8 * w, 16 * w, 3)
        self.c1 = nn.Conv1d(8 * w, 16 * w, 3)
        self.c1k1 = nn.Conv1d(8, 6, 1)

    def forward(self, x):
        return x


def _lokr_roles(folder) -> dict[str, set[str]]:
    from safetensors import safe_open

    roles: dict[str, set[str]] = {}
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        for key in f.keys():
            module, _, role = key.rpartition(".lokr_")
            roles.setdefault(module.removeprefix("base_model.model."), set()).add(role)
    return roles


_LOKR_MODULES = ["fc", "conv", "c1", "c1k1"]


@pytest.mark.parametrize(
    "kwargs, expect",
    [
        # r ≥ max(b, d)/2 and decompose_both=False: peft keeps W₁ and W₂ full and still scales by alpha/r
        (dict(r=8, alpha=4), {m: {"w1", "w2"} for m in _LOKR_MODULES}),
        (dict(r=1, alpha=3, decompose_both=True),
         {"fc": {"w1_a", "w1_b", "w2_a", "w2_b"}, "conv": {"w1_a", "w1_b", "w2_a", "w2_b"},
          "c1": {"w1_a", "w1_b", "w2_a", "w2_b"}, "c1k1": {"w1", "w2_a", "w2_b"}}),
        # rank_pattern/alpha_pattern: fc decomposed (r=1), the rest full with their own alpha/r
        (dict(r=8, alpha=4, rank_pattern={"fc": 1}, alpha_pattern={"c1": 5, "conv": 2}),
         {"fc": {"w1", "w2_a", "w2_b"}, "conv": {"w1", "w2"}, "c1": {"w1", "w2"}, "c1k1": {"w1", "w2"}}),
    ],
    ids=["both-full", "decomposed", "patterns"],
)
def test_peft_lokr_linear_conv2d_conv1d_equal_peft_merge(tmp_path, kwargs, expect):
    cfg = peft.LoKrConfig(target_modules=_LOKR_MODULES, init_weights=False, **kwargs)
    folder, deltas, _ = _merged_deltas(TinyLoKrNet(), cfg, tmp_path)
    assert {m: {r.removesuffix(".weight") for r in roles} for m, roles in _lokr_roles(folder).items()} == expect
    adapter = lolscan.load(str(folder))
    # A decomposed conv W₂ (w2_b [r, d·k]) does not record the kernel size, so those layers have
    # the flattened [out, in·k] shape; compare every ΔW flattened.
    _check_exact(adapter, {m: d.reshape(d.shape[0], -1) for m, d in deltas.items()})
    rank_pattern, alpha_pattern = kwargs.get("rank_pattern", {}), kwargs.get("alpha_pattern", {})
    for m in _LOKR_MODULES:
        layer = adapter[m]
        assert layer.algo == "lokr"
        alpha = alpha_pattern.get(m, kwargs["alpha"])
        assert layer.alpha == alpha and layer.scale == pytest.approx(alpha / rank_pattern.get(m, kwargs["r"]))
    if "w2" in expect["c1"]:
        assert adapter["c1"].shape == (16, 8, 3) and adapter["c1"].kind == "conv"
    assert not any("rank" in w for w in adapter.warnings), adapter.warnings


def test_peft_lokr_effective_conv_tucker_equal_peft_merge(tmp_path):
    # r < max(b, d)/2 with use_effective_conv2d: W₂ is a Tucker core lokr_t2 (Conv1d: [r, r, k, 1])
    cfg = peft.LoKrConfig(r=2, alpha=3, target_modules=["conv", "c1"], init_weights=False, use_effective_conv2d=True)
    folder, deltas, _ = _merged_deltas(TinyLoKrNet(wide=True), cfg, tmp_path)
    roles = _lokr_roles(folder)
    assert roles["conv"] == roles["c1"] == {"w1", "w2_a", "w2_b", "t2"}
    _check_exact(lolscan.load(str(folder)), deltas)


def test_peft_lokr_conv1d_layout_without_config(tmp_path):
    # No adapter_config.json: scale is assumed 1 (alpha = r here), but the Conv1d layout is still peft's.
    cfg = peft.LoKrConfig(r=8, alpha=8, target_modules=["c1", "c1k1"], init_weights=False)
    folder, deltas, _ = _merged_deltas(TinyLoKrNet(), cfg, tmp_path)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "lokr.safetensors").write_bytes((folder / "adapter_model.safetensors").read_bytes())
    adapter = lolscan.load(str(bare / "lokr.safetensors"))
    assert adapter.format == "peft"
    _check_exact(adapter, deltas)


def test_peft_lokr_alpha_zero_is_scale_zero(tmp_path):
    cfg = peft.LoKrConfig(r=8, alpha=0, target_modules=["fc"], init_weights=False)
    folder, _, _ = _merged_deltas(TinyLoKrNet(), cfg, tmp_path)
    adapter = lolscan.load(str(folder))
    assert adapter["fc"].scale == 0 and float(adapter["fc"].delta().abs().max()) == 0.0
    assert any("alpha is 0" in w for w in adapter.warnings)
