"""CLIP score of image–caption pairs (Hessel et al. 2021), computed as torchmetrics computes it.

For one pair: ``100 · max(cos(E_img, E_txt), 0)``, with the embeddings of a ``CLIPModel``
(``get_image_features`` / ``get_text_features``) on the inputs its ``CLIPProcessor`` makes: images as
0–255 tensors (rescaled, resized, cropped and normalised by the processor), captions padded to the
longest. torchmetrics' ``clip_score`` on a single pair gives the same number; over many pairs it clamps
the mean instead of each pair, so the label here is the mean of per-pair scores.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import UsageError


class ClipScorer:
    def __init__(self, model: Any, processor: Any):
        self.model, self.processor = model.eval(), processor

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> "ClipScorer":
        from transformers import CLIPModel, CLIPProcessor

        try:
            model = CLIPModel.from_pretrained(path).to(device)
            processor = CLIPProcessor.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise UsageError(f"CLIP model {path!r}: {exc}".splitlines()[0]) from None
        return cls(model, processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        p = self.processor(text=texts, return_tensors="pt", padding=True)
        n = self.model.config.text_config.max_position_embeddings
        f = self.model.get_text_features(p["input_ids"][..., :n].to(self.device), p["attention_mask"][..., :n].to(self.device))
        return _tensor(f).float()

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """images: [N, 3, H, W] in [0, 1]; quantised to 0–255 as a saved PNG would be."""
        u8 = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        p = self.processor(images=list(u8), return_tensors="pt")
        return _tensor(self.model.get_image_features(p["pixel_values"].to(self.device))).float()

    def unit_features(self, images: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised image [N, D] and text [T, D] embeddings."""
        fi = self.image_features(images)
        ft = self.text_features(texts)
        return fi / fi.norm(p=2, dim=-1, keepdim=True), ft / ft.norm(p=2, dim=-1, keepdim=True)

    def scores(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Per-pair CLIP scores [N] of images[i] with texts[i]."""
        fi, ft = self.unit_features(images, texts)
        return (100 * (fi * ft).sum(-1)).clamp(min=0).cpu()

    def similarity(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """100 · cos of every image with every text [N, T], not clamped (zero-shot classification takes its
        argmax; a CLIP score is its entry clamped at 0)."""
        fi, ft = self.unit_features(images, texts)
        return (100 * fi @ ft.T).cpu()


def _tensor(out: Any) -> torch.Tensor:
    """transformers 5 may return a model output instead of the pooled, projected tensor."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("pooler_output", "image_embeds", "text_embeds"):
        v = getattr(out, key, None)
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"unexpected CLIP feature output {type(out).__name__}")
