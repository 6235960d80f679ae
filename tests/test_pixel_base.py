"""The in-house pixel-space base (``[base] kind = "pixel"``) at tiny size on CPU: made and trained by
scripts/inhouse_base.py, its UNet learns (loss falls on a fixed batch), the label pass samples what a DDIM
loop written out here from the scheduler's formulas samples, and a 4-LoRA zoo on it (Fashion-MNIST images
from IDX files written here) gives diffusers LoRA files `lolscan.load` reads with the trained ΔW exactly."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusion_toy import (  # noqa: E402
    TINY_PIXEL_UNET,
    save_tiny_bert,
    save_tiny_clip,
    toy_diffusion_recipe,
    write_tiny_fashion_mnist,
)
from helpers import load_script  # noqa: E402

import lolscan  # noqa: E402
import lolscan.zoo.diffusion as zd  # noqa: E402
from lolscan.zoo.build import read_zoo_rows  # noqa: E402
from lolscan.zoo.clipscore import ClipScorer  # noqa: E402
from lolscan.zoo.diffusion_base import load_base  # noqa: E402
from lolscan.zoo.diffusion_recipe import DiffusionRecipe  # noqa: E402
from lolscan.zoo.images import get_source  # noqa: E402
from lolscan.zoo.pixel_base import create_pixel_base, train_pixel_base  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def script(*args: str) -> int:
    """scripts/inhouse_base.py's main, in this process (a subprocess would import torch and diffusers again)."""
    return load_script("scripts/inhouse_base.py").main(list(args))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 16 px base on a random 32-d BERT, created and trained 2 steps by the script."""
    root = tmp_path_factory.mktemp("pixel")
    save_tiny_bert(root / "bert")
    assert script("create", str(root / "base"), "--text-encoder", str(root / "bert"), "--copy-text-encoder",
                  "--unet", json.dumps(TINY_PIXEL_UNET)) == 0
    assert script("train", str(root / "base"), "--source", "shapes", "--steps", "2", "--batch-size", "2") == 0
    assert script("train", str(root / "nowhere")) == 3  # no base.json: exit 3
    return root


def test_script_makes_a_pixel_base_with_sd_module_names(made):
    base = load_base({"kind": "pixel", "path": str(made / "base")})
    info = json.loads((made / "base" / "base.json").read_text())
    assert info["kind"] == "pixel" and info["trained"]["steps"] == 2 and info["trained"]["source"] == "shapes"
    assert base.vae is None and base.resolution == 16 and base.latent_shape() == (3, 16, 16)
    cfg = base.unet.config
    assert cfg.in_channels == cfg.out_channels == 3 and cfg.cross_attention_dim == 32
    names = {n for n, _ in base.unet.named_modules()}
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k" in names  # SD's names
    assert "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0" in names
    assert base.encode_text(["a red circle"]).shape == (1, 32, 32)
    # the script trained the UNet: its weights differ from a fresh one of the same seed
    fresh = create_pixel_base(made / "fresh", str(made / "bert"), unet=TINY_PIXEL_UNET)
    a = load_base({"kind": "pixel", "path": str(fresh)}).unet.state_dict()
    assert any(not torch.equal(a[k], v) for k, v in base.unet.state_dict().items())


def test_a_folder_without_base_json_is_exit_3(tmp_path):
    from lolscan.errors import InputError

    with pytest.raises(InputError, match="no base.json .*inhouse_base.py") as e:
        load_base({"kind": "pixel", "path": str(tmp_path)})
    assert e.value.exit_code == 3


def test_production_size_fits_16_mib(tmp_path):
    """The default UNet (32 px, 384-d cross-attention as MiniLM-L6 gives) saved in float32."""
    save_tiny_bert(tmp_path / "bert384", hidden=384)
    folder = create_pixel_base(tmp_path / "base", str(tmp_path / "bert384"))
    base = load_base({"kind": "pixel", "path": str(folder)})
    cfg = base.unet.config
    assert (cfg.sample_size, cfg.in_channels, cfg.out_channels, cfg.cross_attention_dim) == (32, 3, 3, 384)
    assert list(cfg.down_block_types) == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    size = sum(f.stat().st_size for f in (folder / "unet").iterdir())
    assert 8 * 2**20 < size <= 16 * 2**20


def test_captions_come_from_the_sources_own_templates(made, monkeypatch):
    """A source with ``templates`` (the fonts source: its identity recipes' prompts) captions the base's
    training images from them when no templates are passed; an explicit list still wins."""
    from lolscan.zoo.diffusion_base import DiffusionBase

    seen: list[str] = []
    real = DiffusionBase.encode_text
    monkeypatch.setattr(DiffusionBase, "encode_text", lambda self, caps: (seen.extend(caps), real(self, caps))[1])

    class Templated:  # the shapes source with templates of its own
        def __init__(self):
            self._s = get_source("shapes")
            self.classes, self.styles, self.templates = self._s.classes, self._s.styles, ["zq {cls}", "zq {style} {cls}"]

        def image(self, *a):
            return self._s.image(*a)

    train_pixel_base(made / "base", Templated(), 3, batch_size=4, p_uncond=0.0, save=False)
    assert seen and all(c.startswith("zq ") for c in seen), seen
    seen.clear()
    train_pixel_base(made / "base", Templated(), 2, batch_size=4, p_uncond=0.0, save=False, templates=["yy {cls}"])
    assert seen and all(c.startswith("yy ") for c in seen), seen


def test_unet_learns_a_fixed_batch(made, tmp_path):
    shutil.copytree(made / "base", tmp_path / "base")
    before = (tmp_path / "base/unet/diffusion_pytorch_model.safetensors").read_bytes()
    torch.manual_seed(0)
    losses = train_pixel_base(tmp_path / "base", get_source("shapes"), 15, batch_size=4, lr=3e-3, seed=1,
                              fixed_batch=True, save=False)
    assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.3 * losses[0], losses
    assert (tmp_path / "base/unet/diffusion_pytorch_model.safetensors").read_bytes() == before  # save=False


def test_label_pass_samples_ddim_with_guidance(made):
    """`zoo.diffusion.sample` on the plain base equals DDIM (η = 0, x0 clipped to [-1, 1], "leading" timesteps
    with offset 1, final alpha = ᾱ₀) with classifier-free guidance, written out from the formulas."""
    base = load_base({"kind": "pixel", "path": str(made / "base")})
    prompts, seeds, steps, g = ["a red circle", "a blue square"], [0, 5], 4, 3.0
    got = zd.sample(base, 1, prompts, seeds, steps, g)[0]

    tok = base.tokenizer(prompts + [""], padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    with torch.no_grad():
        states = base.text_encoder(tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
    cond, uncond = states[:2], states[2:].expand(2, -1, -1)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    abar = torch.cumprod(1 - betas, 0)
    x = torch.cat([torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(s)) for s in seeds])
    ratio = 1000 // steps
    for i in range(steps):
        t = (steps - 1 - i) * ratio + 1
        a_t = abar[t]
        a_prev = abar[t - ratio] if t - ratio >= 0 else abar[0]
        with torch.no_grad():
            e_u = base.unet(x, t, encoder_hidden_states=uncond).sample
            e_c = base.unet(x, t, encoder_hidden_states=cond).sample
        eps = e_u + g * (e_c - e_u)
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    want = (x / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_four_lora_zoo_on_the_pixel_base(made, tmp_path):
    write_tiny_fashion_mnist(tmp_path / "fmnist")
    save_tiny_clip(tmp_path / "clip")
    d = toy_diffusion_recipe(made / "base", tmp_path / "clip", n_loras=4, group_size=2,
                             base={"kind": "pixel", "path": str(made / "base"), "name": "tiny-pixel"})
    d["data"].update(source="fashion_mnist", source_options={"data_root": str(tmp_path / "fmnist")},
                     templates=["a photo of a {cls}", "a {style} {cls}"])
    d["labels"]["prompts"] = ["a photo of a trouser", "a photo of a bag"]
    recipe = DiffusionRecipe.from_dict(d)
    base = load_base(recipe.base)
    captured = []
    real_extract = zd.extract

    def spy(mods, slot, ranks):
        f = real_extract(mods, slot, ranks)
        captured.append({n: (a, b, float(mods[n].scaling[slot])) for n, (a, b) in f.items()})
        return f

    zd.extract = spy
    try:
        rep = zd.build_diffusion(recipe, tmp_path / "zoo", base=base, clip=ClipScorer.load(str(tmp_path / "clip")),
                                 log=lambda s: None)
    finally:
        zd.extract = real_extract
    assert rep.complete and rep.groups_run == 2
    rows = read_zoo_rows(tmp_path / "zoo" / "manifest.jsonl")
    info = json.loads((tmp_path / "zoo" / "zoo.json").read_text())
    assert info["base"] == "tiny-pixel" and info["data"]["source"] == "fashion_mnist" and info["resolution"] == 16
    assert len(rows) == 4 and len(captured) == 4
    unet_linears = {f"unet.{n}" for n, _ in base.unet.named_modules() if n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))}
    assert len(unet_linears) == 4 * 2 * 4  # q/k/v/out of attn1 and attn2 in down 0, mid, up 1 (two)
    for r, cap in zip(rows, captured):
        assert r["finite"] and 0 <= r["clip_score"] <= 100 and r["classes"]
        assert r["cls_Ankle boot"] == int("Ankle boot" in r["classes"])
        assert np.isfinite(r["train_loss_first"]) and np.isfinite(r["train_loss_last"])
        ad = lolscan.load(str(tmp_path / "zoo" / r["path"]))
        assert set(ad.layers) == {f"unet.{n}" for n in cap} == unet_linears and set(ad.ranks) == {r["rank"]}
        for name, (a, b, scale) in cap.items():
            assert scale == r["alpha"] / r["rank"]
            torch.testing.assert_close(ad[f"unet.{name}"].delta().double(), scale * (b.double() @ a.double()),
                                       rtol=1e-6, atol=1e-9)
            assert b.abs().sum() > 0  # trained: B starts at zero


def test_picture_merges_a_lora_as_the_zoo_runs_it(made):
    """bench/diffusion_picture.py adds lolscan's ΔW = U Vᵀ to the UNet's weights: its images equal those of
    the zoo's own LoRA forward (`multilora.inject`, x·Aᵀ·Bᵀ·scale beside the frozen linear) with the same
    factors, and the base's weights come back unchanged."""
    from lolscan.adapter import Adapter, Layer
    from lolscan.zoo.multilora import eject, inject

    pic = load_script("bench/diffusion_picture.py")
    base = load_base({"kind": "pixel", "path": str(made / "base")})
    names = [n for n, _ in base.unet.named_modules() if n.endswith((".to_q", ".to_v"))]
    g = torch.Generator().manual_seed(3)
    factors = {}
    for n in names:
        lin = base.unet.get_submodule(n)
        a = torch.randn(2, lin.in_features, generator=g) * 0.3
        b = torch.randn(lin.out_features, 2, generator=g) * 0.3
        factors[n] = (a, b)
    adapter = Adapter(layers={f"unet.{n}": Layer(U=b * 0.5, V=a.T.contiguous(), shape=(b.shape[0], a.shape[1]))
                              for n, (a, b) in factors.items()}, format="test")
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    prompts, seeds = ["a red circle", "a red circle"], [0, 1]
    got = pic.images_with(base, adapter, prompts, seeds, 3, 3.0)
    assert all(torch.equal(before[k], v) for k, v in base.unet.state_dict().items())
    mods = inject(base.unet, names, 1, 2)
    try:
        for n, (a, b) in factors.items():
            mods[n].lora_A.data[0] = a
            mods[n].lora_B.data[0] = b
            mods[n].scaling[0] = 0.5
        want = zd.sample(base, 1, prompts, seeds, 3, 3.0)[0].permute(0, 2, 3, 1).numpy()
    finally:
        eject(base.unet, names)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    plain = pic.images_with(base, None, prompts, seeds, 3, 3.0)
    assert np.abs(plain - got).max() > 1e-3  # the LoRA changes the images


def test_dora_zoo_on_the_pixel_base(made, tmp_path):
    """``[lora] use_dora = true`` (issue 18): the files are DoRA files as peft writes them
    (``lora_magnitude_vector``, use_dora in the config); `lolscan.load` reads the trained magnitude, the
    trained ΔW, and its merged weight m ⊙ (W + ΔW) / ‖W + ΔW‖ is the in-memory slot's weight, whose forward
    the wrapper runs. The recipe without the option keeps the digest it had before the option existed."""
    from safetensors import safe_open

    write_tiny_fashion_mnist(tmp_path / "fmnist")
    save_tiny_clip(tmp_path / "clip")
    d = toy_diffusion_recipe(made / "base", tmp_path / "clip", n_loras=2, group_size=2,
                             base={"kind": "pixel", "path": str(made / "base"), "name": "tiny-pixel"})
    d["data"].update(source="fashion_mnist", source_options={"data_root": str(tmp_path / "fmnist")})
    d["labels"]["prompts"] = ["a photo of a bag"]
    d["lora"]["use_dora"] = True
    recipe = DiffusionRecipe.from_dict(d)
    assert recipe.use_dora and recipe.to_dict()["lora"]["use_dora"] is True
    base = load_base(recipe.base)
    captured = []
    real = zd.extract_magnitude

    def spy(mods, slot):
        mags = real(mods, slot)
        cap = {}
        for n, mod in mods.items():
            w = mod.base.weight.detach().double()
            r = int(mod.rank_mask[slot].sum())
            a, b = mod.lora_A[slot, :r].detach().double(), mod.lora_B[slot, :, :r].detach().double()
            v = w + float(mod.scaling[slot]) * (b @ a)
            w_new = mod.lora_magnitude[slot].detach().double().view(-1, 1) * v / v.norm(dim=1, keepdim=True)
            # the wrapper's forward at this slot is the linear with that weight
            x = torch.randn(mod.k * 3, mod.base.in_features, generator=torch.Generator().manual_seed(slot))
            want = torch.nn.functional.linear(x[slot * 3:(slot + 1) * 3].double(), w_new,
                                              None if mod.base.bias is None else mod.base.bias.double())
            with torch.no_grad():
                torch.testing.assert_close(mod(x)[slot * 3:(slot + 1) * 3].double(), want, rtol=1e-5, atol=1e-5)
            cap[n] = (mags[n], w_new, float(mod.scaling[slot]), a, b)
        captured.append(cap)
        return mags

    zd.extract_magnitude = spy
    try:
        rep = zd.build_diffusion(recipe, tmp_path / "zoo", base=base, clip=ClipScorer.load(str(tmp_path / "clip")),
                                 log=lambda s: None)
    finally:
        zd.extract_magnitude = real
    assert rep.complete and len(captured) == 2
    rows = read_zoo_rows(tmp_path / "zoo" / "manifest.jsonl")
    info = json.loads((tmp_path / "zoo" / "zoo.json").read_text())
    assert info["recipe"]["lora"]["use_dora"] is True and info["recipe_digest"] == recipe.digest()
    unet = base.unet.state_dict()
    for r, cap in zip(rows, captured):
        assert r["finite"]
        path = tmp_path / "zoo" / r["path"]
        with safe_open(str(path), "pt") as f:
            keys = set(f.keys())
            meta = json.loads(f.metadata()["lora_adapter_metadata"])
        assert meta["unet.use_dora"] is True and meta["unet.r"] == r["rank"]
        assert {k for k in keys if k.endswith(".lora_magnitude_vector")} == {f"unet.{n}.lora_magnitude_vector" for n in cap}
        ad = lolscan.load(str(path))
        assert set(ad.layers) == {f"unet.{n}" for n in cap}
        for name, (mag, w_new, scale, a, b) in cap.items():
            layer = ad[f"unet.{name}"]
            assert layer.magnitude is not None and layer.dora_axis == "out" and not layer.exact
            torch.testing.assert_close(layer.magnitude, mag, rtol=0, atol=0)
            w = unet[f"{name}.weight"]
            assert (mag - w.norm(dim=1)).abs().max() > 1e-6  # the magnitude trained away from its init ‖W‖
            torch.testing.assert_close(layer.delta().double(), scale * (b @ a), rtol=1e-6, atol=1e-9)
            torch.testing.assert_close(layer.merged_weight(w).double(), w_new, rtol=1e-5, atol=1e-6)
    # zoo.diffusion.merged (the bench scripts' way to sample a file) puts that weight in, then restores W
    name = next(iter(captured[0]))
    mod = base.unet.get_submodule(name)
    before = mod.weight.detach().clone()
    with zd.merged(base.unet, lolscan.load(str(tmp_path / "zoo" / rows[0]["path"]))):
        torch.testing.assert_close(mod.weight.double(), captured[0][name][1], rtol=1e-5, atol=1e-6)
    assert torch.equal(mod.weight, before)
    # without the option (or with it false): the digest computed on main before the option existed
    plain = toy_diffusion_recipe(Path("/p"), Path("/c"))
    assert DiffusionRecipe.from_dict(plain).digest() == "6c272a3ec5d4ee55"
    plain["lora"]["use_dora"] = False
    assert DiffusionRecipe.from_dict(plain).digest() == "6c272a3ec5d4ee55"
    assert "use_dora" not in DiffusionRecipe.from_dict(plain).to_dict()["lora"]
