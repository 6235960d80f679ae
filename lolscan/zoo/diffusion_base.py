"""The base model of a diffusion zoo: what training and sampling need of it, whatever its kind.

`DiffusionBase` holds a denoiser (``unet``: ``unet(x, t, encoder_hidden_states=…).sample``), a text
encoder with its tokenizer, the noise scheduler, and — for a latent model — a VAE. Training and the
label pass only go through its methods (`encode_text`, `to_model_space`, `from_model_space`), so a
pixel-space base (``vae = None``: the model works on images directly) fits the same code.

Kinds (``[base] kind``): ``diffusers`` loads a Stable Diffusion 1.x/2.x pipeline folder or hub id;
``pixel`` the in-house pixel-space base (`pixel_base`: a 32 px SD-style UNet on a frozen MiniLM text encoder).
A new kind is a loader ``(base table, device, dtype, path) -> DiffusionBase`` in `BASE_KINDS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..errors import UsageError


@dataclass
class DiffusionBase:
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any  # the pipeline's (sampling) scheduler; training adds noise with its betas
    vae: Any | None  # None: a pixel-space model
    resolution: int  # image side in pixels
    name: str
    pipeline_class: Any = None  # for writing LoRA files the way that pipeline's save_lora_weights does

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Token states as StableDiffusionPipeline.encode_prompt makes them (max-length padding, no mask
        unless the text encoder's config asks for one)."""
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        ids = tok.input_ids.to(self.device)
        mask = tok.attention_mask.to(self.device) if getattr(self.text_encoder.config, "use_attention_mask", False) else None
        return self.text_encoder(ids, attention_mask=mask)[0].to(self.dtype)

    @torch.no_grad()
    def to_model_space(self, images: list[np.ndarray]) -> torch.Tensor:
        """[N, C, h, w] what the denoiser works on: VAE latents (the posterior mean, scaled) or pixels in [-1, 1]."""
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(self.device, self.dtype) * 2 - 1
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def from_model_space(self, z: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1], as the pipeline's ``output_type="pt"`` returns them (decoded
        `chunk` at a time: a VAE decode at 512 px needs GPU memory per image)."""
        if self.vae is None:
            return (z.float() / 2 + 0.5).clamp(0, 1)
        parts = [self.vae.decode(z[i:i + chunk] / self.vae.config.scaling_factor).sample.float()
                 for i in range(0, len(z), chunk)]
        return (torch.cat(parts) / 2 + 0.5).clamp(0, 1)

    def latent_shape(self) -> tuple[int, int, int]:
        if self.vae is None:
            return (self.unet.config.in_channels, self.resolution, self.resolution)
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.unet.config.in_channels, self.resolution // f, self.resolution // f)

    def init_noise(self, seed: int) -> torch.Tensor:
        """The starting latents of one image, as the pipeline draws them for ``generator=manual_seed(seed)``
        (on the CPU, so every device starts from the same noise)."""
        g = torch.Generator().manual_seed(int(seed))
        return torch.randn((1, *self.latent_shape()), generator=g, dtype=torch.float32)


def load_diffusers(base: dict[str, Any], device: str, dtype: str | None, path: str) -> DiffusionBase:
    from diffusers import DiffusionPipeline

    dt = getattr(torch, dtype or base.get("dtype", "float32"))
    try:
        pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=dt, safety_checker=None,
                                                 requires_safety_checker=False)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise UsageError(f"base pipeline {path!r}: {exc}".splitlines()[0]) from None
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if getattr(pipe, part, None) is None:
            raise UsageError(f"base pipeline {path!r} has no {part}: a Stable Diffusion 1.x/2.x pipeline is needed")
    pipe.to(device)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.eval().requires_grad_(False)
    res = int(base.get("resolution") or pipe.unet.config.sample_size * pipe.vae_scale_factor)
    return DiffusionBase(unet=pipe.unet, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                         scheduler=pipe.scheduler, vae=pipe.vae, resolution=res,
                         name=base.get("name") or path, pipeline_class=type(pipe))


def load_pixel(base: dict[str, Any], device: str, dtype: str | None, path: str) -> DiffusionBase:
    from .pixel_base import load_pixel as load

    return load(base, device, dtype, path)


BASE_KINDS: dict[str, Callable[..., DiffusionBase]] = {"diffusers": load_diffusers, "pixel": load_pixel}


def load_base(base: dict[str, Any], device: str = "cpu", dtype: str | None = None,
              path_override: str | None = None) -> DiffusionBase:
    kind = base.get("kind", "diffusers")
    if kind not in BASE_KINDS:
        raise UsageError(f"recipe: unknown base kind {kind!r} (known: {', '.join(BASE_KINDS)})")
    return BASE_KINDS[kind](base, device, dtype, path_override or base["path"])
