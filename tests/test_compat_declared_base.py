"""A remote source's declared base model joins the layer-shape check in predict's compatibility test."""
from __future__ import annotations

import pytest
import torch

from lolscan.adapter import Adapter, Layer
from lolscan.checkpoint import check_fits
from lolscan.errors import IncompatibleAdapter
from lolscan.nets import LayerSpec


def _adapter(declared: str | None) -> Adapter:
    layer = Layer(U=torch.randn(320, 4), V=torch.randn(768, 4), shape=(320, 768))
    md = {"source": {"base_model": declared}} if declared else {}
    return Adapter(layers={"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": layer}, format="test",
                   source="civitai:123", metadata=md)


@pytest.mark.parametrize("declared,ok", [("SD 1.5", True), (None, True), ("SDXL 1.0", False), ("Pony", False), ("Flux.1 D", False)])
def test_declared_base_model_family(declared, ok):
    adapter = _adapter(declared)
    spec = LayerSpec.from_adapters([adapter])
    rule = {"name": "sd-test", "base_model": "sd1", "architecture": "glnet", "rank": None}
    if ok:
        check_fits(adapter, spec, rule)
    else:
        with pytest.raises(IncompatibleAdapter, match="declares base model"):
            check_fits(adapter, spec, rule)


def test_llm_checkpoint_ignores_diffusion_family_text():
    adapter = _adapter("SDXL 1.0")
    spec = LayerSpec.from_adapters([adapter])
    check_fits(adapter, spec, {"name": "x", "base_model": "llama-style LLM, hidden 576", "architecture": "glnet", "rank": None})
