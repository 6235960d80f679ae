"""DoRA in the multi-LoRA trainer (issue 18): the K-slot forward is peft's DoRA Linear per slot, a stacked
training of DoRA adapters is separate peft DoRA trainings, and without the option nothing changes."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from zoo_toy import peft_causal_lm_steps, peft_with_zoo_init, tiny_llama

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from lolscan.zoo.multilora import (
    eject,
    extract,
    extract_magnitude,
    find_targets,
    inject,
    train_group,
)
from lolscan.zoo.recipe import LoraSpec

SEED = 5


def _peft_dora_linear(lin: nn.Linear, a, b, mag, scaling, dropout=0.0):
    """A peft LoraModel with use_dora=True on one nn.Linear, with the given A, B, magnitude and scaling."""
    from peft import LoraConfig, get_peft_model

    r = a.shape[0]
    pm = get_peft_model(nn.Sequential(copy.deepcopy(lin)),
                        LoraConfig(r=r, lora_alpha=scaling * r, target_modules=["0"], use_dora=True,
                                   lora_dropout=dropout))
    layer = pm.base_model.model[0]
    assert layer.scaling["default"] == pytest.approx(scaling)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(a)
        layer.lora_B["default"].weight.copy_(b)
        if mag is not None:
            layer.lora_magnitude_vector["default"].weight.copy_(mag)
    return pm, layer


@pytest.mark.parametrize("bias", [True, False])
def test_k_slot_dora_forward_is_peft_dora_per_slot(bias):
    torch.manual_seed(0)
    lin = nn.Linear(12, 7, bias=bias)
    k, r_max, ranks, scal = 3, 4, [2, 4, 3], [0.5, 2.0, 1.0]
    mods = inject(nn.Sequential(lin), ["0"], k, r_max, dora=True)
    m = mods["0"]
    g = torch.Generator().manual_seed(1)
    slots = []
    with torch.no_grad():
        for slot, r in enumerate(ranks):
            a = torch.randn(r, 12, generator=g) * 0.3
            b = torch.randn(7, r, generator=g) * 0.3
            m.lora_A[slot].zero_()
            m.lora_A[slot, :r] = a
            m.lora_B[slot].zero_()
            m.lora_B[slot, :, :r] = b
            m.rank_mask[slot] = (torch.arange(r_max) < r).float()
            m.scaling[slot] = scal[slot]
            m.init_magnitude(slot)
            # the init is peft's: the row norms of W + s·B A (peft's own get_weight_norm)
            _, ref = _peft_dora_linear(lin, a, b, None, scal[slot])
            want = ref.lora_magnitude_vector["default"].get_weight_norm(lin.weight, b @ a, scal[slot])
            torch.testing.assert_close(m.lora_magnitude[slot], want, rtol=1e-6, atol=1e-6)
            mag = m.lora_magnitude[slot] * (1 + 0.2 * torch.randn(7, generator=g))  # trained away from the init
            m.lora_magnitude[slot] = mag
            slots.append((a, b, mag))
    x = torch.randn(k * 5, 12, generator=g)
    for mode in ("train", "eval"):
        getattr(m, mode)()
        y = m(x)
        for slot, (a, b, mag) in enumerate(slots):
            pm, _ = _peft_dora_linear(lin, a, b, mag, scal[slot])
            getattr(pm, mode)()
            torch.testing.assert_close(y[slot * 5:(slot + 1) * 5], pm(x[slot * 5:(slot + 1) * 5]), rtol=1e-5, atol=1e-5)
    # the gradient reaches the magnitude and the factors, not the (detached) norm: peft's
    m.train()
    m.lora_magnitude.requires_grad_(True)
    m.lora_A.requires_grad_(True)
    m(x).square().sum().backward()
    for slot, (a, b, mag) in enumerate(slots):
        pm, layer = _peft_dora_linear(lin, a, b, mag, scal[slot])
        pm(x[slot * 5:(slot + 1) * 5]).square().sum().backward()
        torch.testing.assert_close(m.lora_magnitude.grad[slot], layer.lora_magnitude_vector["default"].weight.grad,
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.lora_A.grad[slot, :ranks[slot]], layer.lora_A["default"].weight.grad,
                                   rtol=1e-5, atol=1e-5)


def test_without_dora_the_wrapper_has_no_magnitude():
    lin = nn.Linear(6, 5)
    m = inject(nn.Sequential(lin), ["0"], 2, 2)["0"]
    assert not m.dora and "lora_magnitude" not in dict(m.named_parameters())
    assert extract_magnitude({"0": m}, 0) is None


def _spec(i, rank, lr, steps, bs, wd, dropout=0.0):
    return LoraSpec(index=i, rank=rank, layer_ranks=None, alpha=2.0 * rank, lr=lr, steps=steps,
                    batch_size=bs, dropout=dropout, weight_decay=wd, sources=["s"], split="train")


def _peft_dora_reference(base, targets, spec, batches):
    """peft DoRA (use_dora=True) + torch.optim.AdamW + HF's causal-LM loss, one adapter."""
    pm, inner = peft_with_zoo_init(base, targets, spec, dict.fromkeys(targets, spec.rank), SEED, use_dora=True)
    params = [p for p in pm.parameters() if p.requires_grad]
    assert len(params) == 3 * len(targets)  # A, B and the magnitude
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    losses = peft_causal_lm_steps(pm, batches, opt)
    out = {}
    for n in targets:
        mod = inner.get_submodule(n)
        out[n] = (mod.lora_A["default"].weight.detach().clone(), mod.lora_B["default"].weight.detach().clone(),
                  mod.lora_magnitude_vector["default"].weight.detach().clone())
    return losses, out


def test_stacked_dora_training_equals_separate_peft_dora_runs():
    base = tiny_llama()
    targets = find_targets(base, ["k_proj", "v_proj"])
    specs = [_spec(0, 2, 2e-2, 4, 3, 0.0), _spec(1, 4, 3e-2, 3, 2, 0.1)]  # other rank, steps, batch, decay
    gen = torch.Generator().manual_seed(0)
    batches = [[[torch.randint(3, 64, (int(torch.randint(5, 14, (1,), generator=gen)),), generator=gen).tolist()
                 for _ in range(s.batch_size)] for _ in range(s.steps)] for s in specs]
    model = copy.deepcopy(base)
    model.config._attn_implementation = "eager"
    mods, losses = train_group(model, targets, specs, {}, SEED, batches=batches, dora=True)
    for slot, s in enumerate(specs):
        ref_losses, ref = _peft_dora_reference(base, targets, s, batches[slot])
        torch.testing.assert_close(losses[: s.steps, slot], torch.tensor(ref_losses), rtol=0, atol=2e-5)
        ours, mags = extract(mods, slot, {n: s.rank for n in targets}), extract_magnitude(mods, slot)
        for n in targets:
            ra, rb, rm = ref[n]
            torch.testing.assert_close(ours[n][0], ra, rtol=0, atol=2e-5)
            torch.testing.assert_close(ours[n][1], rb, rtol=0, atol=2e-5)
            torch.testing.assert_close(mags[n], rm, rtol=0, atol=2e-5)
            w = base.get_submodule(n).weight
            assert (mags[n] - w.norm(dim=1)).abs().max() > 1e-4  # the magnitude trained away from ‖W‖
    eject(model, targets)
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), base.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_language_dora_zoo_writes_peft_dora_folders(tmp_path):
    """``[lora] use_dora = true`` in a language recipe: PEFT folders peft loads as DoRA (its merged weights equal
    lolscan's reading m ⊙ (W + ΔW) / ‖W + ΔW‖ of the same files); without the option the digest is main's."""
    from pathlib import Path

    from peft import PeftModel
    from zoo_toy import CharTokenizer, toy_recipe, write_toy_data

    import lolscan
    from lolscan.zoo.build import build, read_zoo_rows
    from lolscan.zoo.recipe import Recipe

    plain = toy_recipe(Path("/r"))
    assert Recipe.from_dict(plain).digest() == "7cbe652ad21b4373"  # computed on main, before the option
    root = tmp_path / "d"
    write_toy_data(root)
    d = toy_recipe(root, n_loras=2)
    d["lora"]["use_dora"] = True
    recipe = Recipe.from_dict(d)
    assert recipe.to_dict()["lora"]["use_dora"] is True and recipe.digest() != Recipe.from_dict(toy_recipe(root, n_loras=2)).digest()
    out = tmp_path / "z"
    rep = build(recipe, out, model=tiny_llama(), tokenizer=CharTokenizer(), log=lambda s: None)
    assert rep.complete
    base_w = dict(tiny_llama().named_parameters())
    for row in read_zoo_rows(out / "manifest.jsonl"):
        assert row["finite"]
        cfg = json.loads((out / row["path"] / "adapter_config.json").read_text())
        assert cfg["use_dora"] is True
        ad = lolscan.load(str(out / row["path"]))
        pm = PeftModel.from_pretrained(tiny_llama(), str(out / row["path"])).eval()
        inner = pm.base_model.model
        mags = {}
        for name, layer in ad.items():
            mod_name = next(n for n, m in inner.named_modules() if hasattr(m, "lora_magnitude_vector")
                            and n.endswith(name.split("model.", 1)[-1]))
            mod = inner.get_submodule(mod_name)
            mag = mod.lora_magnitude_vector["default"].weight.detach()
            assert layer.magnitude is not None and torch.equal(layer.magnitude, mag)
            w = base_w[mod_name + ".weight" if mod_name + ".weight" in base_w else mod_name.replace(".base_layer", "") + ".weight"]
            assert (mag - w.norm(dim=1)).abs().max() > 1e-6  # trained away from its init
            mags[mod_name] = layer.merged_weight(w.detach())
        assert len(mags) == 4  # k_proj and v_proj of both layers
        merged = pm.merge_and_unload()
        for n, want in mags.items():
            torch.testing.assert_close(merged.get_submodule(n).weight.detach(), want, rtol=1e-5, atol=1e-6)


def test_shipped_dora_recipe_is_the_inhouse_clip_recipe_with_dora():
    from pathlib import Path

    from lolscan.zoo.diffusion_recipe import load_recipe

    recipes = Path(__file__).resolve().parent.parent / "recipes"
    dora = load_recipe(recipes / "inhouse-fashion-classes-dora.toml")
    parent = load_recipe(recipes / "inhouse-fashion-classes-inhouse-clip.toml")
    assert dora.use_dora and not parent.use_dora and dora.n_loras == 256 and dora.seed != parent.seed
    a, b = dora.to_dict(), parent.to_dict()
    for d in (a, b):
        for key in ("name", "seed", "n_loras"):
            d.pop(key)
    assert a["lora"].pop("use_dora") is True and a == b  # otherwise the parent recipe
    assert parent.digest() == "251d2f6e6539c531"  # the parent's digest on main, before the option existed


def test_diffusers_loads_a_dora_file_as_the_wrappers_unet(tmp_path):
    """diffusers' ``load_lora_weights`` reads `write_diffusers_lora`'s DoRA file as DoRA (peft's
    lora_magnitude_vector): its UNet equals the multi-LoRA wrapper's at that slot."""
    pytest.importorskip("diffusers")
    from types import SimpleNamespace

    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusion_toy import save_tiny_sd

    from lolscan.zoo.diffusion import WEIGHT_NAME, write_diffusers_lora

    save_tiny_sd(tmp_path / "pipe", tmp_path / "clip")
    mine = UNet2DConditionModel.from_pretrained(tmp_path / "pipe" / "unet").eval()
    tm = ["to_q", "to_k", "to_v", "to_out.0"]
    targets = find_targets(mine, tm)
    mods = inject(mine, targets, 2, 2, dora=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in mods.values():
            m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=g) * 0.2)
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.2)
            m.scaling.fill_(0.5)
            for slot in range(2):
                m.init_magnitude(slot)
            m.lora_magnitude.mul_(1 + 0.3 * torch.rand(m.lora_magnitude.shape, generator=g))
    write_diffusers_lora(tmp_path / "lora", SimpleNamespace(rank=2, alpha=1.0), extract(mods, 1, {n: 2 for n in targets}),
                         tm, magnitudes=extract_magnitude(mods, 1))
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe", safety_checker=None)
    pipe.load_lora_weights(str(tmp_path / "lora"), weight_name=WEIGHT_NAME)
    unet = pipe.unet.eval()
    assert all(hasattr(unet.get_submodule(n), "lora_magnitude_vector") for n in targets)
    x, eh = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        want = mine(x.repeat(2, 1, 1, 1), 10, encoder_hidden_states=eh.repeat(2, 1, 1)).sample[1:]
        got = unet(x, 10, encoder_hidden_states=eh).sample
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - UNet2DConditionModel.from_pretrained(tmp_path / "pipe" / "unet").eval()(
        x, 10, encoder_hidden_states=eh).sample).abs().max() > 1e-3  # the adapter changes the output
