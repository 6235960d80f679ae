"""Direct oracles for `formats/peft_config.py` and `formats/scheme.py` (the fast/full differential tests
share these modules, so a bug in them cannot show there): peft's own ``get_pattern_key`` and merge, and
ΔW recomputed from the raw tensors."""
from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

peft = pytest.importorskip("peft")
from peft.utils.other import get_pattern_key  # noqa: E402

import lolscan  # noqa: E402
from lolscan.errors import InputError  # noqa: E402
from lolscan.formats.peft_config import pattern_value, peft_scale  # noqa: E402

from test_formats_peft import _check_exact, _merged_deltas  # noqa: E402

NAMES = ["q_proj", "proj", "blk.proj", "blk.q_proj", "model.layers.0.self_attn.q_proj", "model.layers.10.mlp.up_proj",
         "layers.0.self_attn.q_proj", "xproj", "a.b.proj", "blk.q_proj.lora", "model.layers.1.self_attn.v_proj", "fc", "fc1"]
KEYS = ["proj", "q_proj", "v_proj", "fc", "blk.proj", "layers.0.self_attn.q_proj", r"layers\.\d+\.mlp\.up_proj", ".*q_proj", "^blk.q_proj",
        "(q|v)_proj", "[qv]_proj", r"model\.layers\.1\..*", "up_proj", "self_attn.q_proj", "a.b", "b.proj"]


def test_pattern_keys_match_as_peft_get_pattern_key():
    """Every single key against every name, then random dicts (first key in dict order wins)."""
    for key, name in itertools.product(KEYS, NAMES):
        assert (pattern_value({key: 1}, name) == 1) == (get_pattern_key([key], name) == key), (key, name)
    rng = random.Random(0)
    for _ in range(300):
        keys = rng.sample(KEYS, rng.randint(2, 6))
        name = rng.choice(NAMES)
        want = get_pattern_key(keys, name)
        got = pattern_value({k: i for i, k in enumerate(keys)}, name)
        assert (keys[got] if got is not None else name) == want, (keys, name)


def test_a_plain_key_needs_a_dot_before_it():
    """peft's dotted-boundary rule: ``proj`` is ``proj`` or ``….proj``, never ``q_proj``."""
    assert pattern_value({"proj": 2}, "proj") == 2 and pattern_value({"proj": 2}, "blk.proj") == 2
    assert pattern_value({"proj": 2}, "q_proj") is None and pattern_value({"proj": 2}, "blk.q_proj") is None


@pytest.mark.parametrize("key, why", [("(.*)*x$", "nested repeats"), ("(a+)+$", "nested repeats"), ("(a|aa)*b", "alternation inside a repeat"),
                                      (".*a.*b.*c", "more than 2 repeats"), (r"(q)\1", "a backreference"), ("(?=q)q", "a lookaround"),
                                      ("(", "not a valid regular expression"), ("x" * 300 + ".*", "characters long")])
def test_patterns_that_could_run_unbounded_are_refused_clearly(key, why):
    with pytest.raises(InputError, match=why.replace("(", r"\(")):
        pattern_value({key: 1}, "model.layers.0.self_attn.q_proj")


def test_regex_keys_and_long_module_names():
    with pytest.raises(InputError, match="too long to match"):
        pattern_value({".*q_proj": 1}, "a." * 300 + "q_proj")
    assert pattern_value({"q_proj": 1}, "a." * 300 + "q_proj") == 1  # a plain key: a dict lookup, any length


class ProjNet(nn.Module):
    """Module names where a plain suffix and peft's dotted rule disagree (``proj`` vs ``q_proj``)."""

    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(8, 6)
        self.proj = nn.Linear(6, 8)
        self.blk = nn.ModuleDict({"proj": nn.Linear(8, 8), "q_proj": nn.Linear(8, 4)})

    def forward(self, x):
        return self.proj(self.q_proj(x)) + self.blk["proj"](x)


def test_rank_and_alpha_patterns_equal_peft_merge(tmp_path):
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "proj"], init_lora_weights=False,
                          rank_pattern={"proj": 2, r"blk\.q_\w+": 3}, alpha_pattern={"proj": 3, "^blk.q_proj": 5})
    folder, deltas, _ = _merged_deltas(ProjNet(), cfg, tmp_path)
    adapter = lolscan.load(str(folder))
    _check_exact(adapter, deltas)
    got = {name: (layer.rank, layer.alpha, layer.scale) for name, layer in adapter.items()}
    assert got == {"q_proj": (4, 8, 2.0), "proj": (2, 3, 1.5), "blk.proj": (2, 3, 1.5), "blk.q_proj": (3, 5, 5 / 3)}


def test_config_without_lora_alpha_uses_peft_default_8(tmp_path):
    """peft's LoraConfig default lora_alpha is 8; an ``alpha`` key (LoHa/LoKr's name) is not read for LoRA."""
    cfg = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "proj"], init_lora_weights=False)
    folder, _, original = _merged_deltas(ProjNet(), cfg, tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    del config["lora_alpha"]
    config["alpha"] = 3
    (folder / "adapter_config.json").write_text(json.dumps(config))
    base = ProjNet()
    base.load_state_dict(original)
    merged = peft.PeftModel.from_pretrained(base, str(folder)).merge_and_unload().state_dict()
    deltas = {k[: -len(".weight")]: merged[k] - original[k] for k in original if k.endswith(".weight") and not torch.equal(merged[k], original[k])}
    adapter = lolscan.load(str(folder))
    _check_exact(adapter, deltas)
    assert {layer.scale for layer in adapter.values()} == {2.0} and {layer.alpha for layer in adapter.values()} == {8.0}


def test_peft_scale_rules():
    assert peft_scale({"lora_alpha": 8}, "a.q_proj", 4) == (2.0, 8.0)
    assert peft_scale({"lora_alpha": 8, "use_rslora": True}, "a.q_proj", 4) == (4.0, 8.0)
    assert peft_scale({}, "a.q_proj", 4) == (2.0, 8.0)
    assert peft_scale({"lora_alpha": 8, "alpha_pattern": {"q_proj": 2}}, "a.q_proj", 4) == (0.5, 2.0)
    assert peft_scale({"lora_alpha": 8, "alpha_pattern": {"proj": 2}}, "a.q_proj", 4) == (2.0, 8.0)


def test_diffusers_component_metadata_scales_equal_raw_tensor_delta(tmp_path):
    """diffusers' ``lora_adapter_metadata`` (per-component PEFT config) decides each module's scale:
    ΔW = alpha/√r · B A (rsLoRA) with alpha from the component's alpha_pattern (peft's dotted rule) or
    lora_alpha; recomputed here from the raw tensors."""
    g = torch.Generator().manual_seed(2)
    names = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k": 2.0,  # alpha_pattern "to_k"
             "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": 8.0,
             "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.add_k_proj": 8.0}  # "k_proj" ≠ "add_k_proj"
    t = {}
    for name in names:
        t[f"{name}.lora_A.weight"] = torch.randn(4, 8, generator=g)
        t[f"{name}.lora_B.weight"] = torch.randn(6, 4, generator=g)
    meta = {"unet.r": 4, "unet.lora_alpha": 8, "unet.use_rslora": True, "unet.alpha_pattern": {"to_k": 2, "k_proj": 5}}
    save_file(t, tmp_path / "d.safetensors", metadata={"lora_adapter_metadata": json.dumps(meta)})
    adapter = lolscan.load(str(tmp_path / "d.safetensors"))
    assert adapter.format == "diffusers"
    for name, alpha in names.items():
        want = alpha / math.sqrt(4) * (t[f"{name}.lora_B.weight"].double() @ t[f"{name}.lora_A.weight"].double())
        torch.testing.assert_close(adapter[name].delta().double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("alpha, scale", [(None, 1.0), (0.0, 1.0), (2.0, 0.5), (-8.0, -2.0)])
def test_kohya_alpha_rule_equals_raw_tensor_delta(tmp_path, alpha, scale):
    g = torch.Generator().manual_seed(3)
    t = {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.randn(4, 8, generator=g),
         "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.randn(6, 4, generator=g)}
    if alpha is not None:
        t["lora_unet_mid_block_attentions_0_proj_in.alpha"] = torch.tensor(alpha)
    save_file(t, tmp_path / "k.safetensors")
    layer = lolscan.load(str(tmp_path / "k.safetensors"))["unet.mid_block.attentions.0.proj_in"]
    want = scale * (t["lora_unet_mid_block_attentions_0_proj_in.lora_up.weight"] @ t["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"])
    torch.testing.assert_close(layer.delta(), want, rtol=1e-6, atol=1e-6)
