"""Which base model an adapter was trained on, guessed from its metadata, module names and shapes
(for messages: `lolscan inspect`, and why an adapter does not fit a checkpoint)."""
from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # duck-typed: `lolscan.inspect_fast` passes a torch-free stand-in
    from ..adapter import Adapter


_SD_ATTN2_K = re.compile(r"attn2\.to_k$")


def guess_family(adapter: Adapter) -> str:
    """Base model family from metadata, then from the module names and shapes."""
    md = adapter.metadata.get("safetensors", {}) or {}
    version = str(md.get("ss_base_model_version", "")).lower()
    arch = str(md.get("modelspec.architecture", "")).lower()
    for needle, family in (("sdxl", "sdxl"), ("stable-diffusion-xl", "sdxl"), ("flux", "flux"), ("sd_v2", "sd2"),
                           ("stable-diffusion-v2", "sd2"), ("sd_v1", "sd1"), ("stable-diffusion-v1", "sd1"), ("sd3", "sd3"),
                           ("stable-diffusion-3", "sd3")):
        if needle in version or needle in arch:
            return family
    names = list(adapter.layers)
    if any(n.startswith("text_encoder_2.") for n in names):
        return "sdxl"
    if any(".double_blocks." in n or ".single_transformer_blocks." in n or ".single_blocks." in n for n in names):
        return "flux"
    for name, layer in adapter.layers.items():
        if _SD_ATTN2_K.search(name):
            return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(layer.m, f"unet (cross-attention {layer.m})")
    if any(n.startswith("unet.") for n in names):
        return "sd (unet)"
    if any(n.startswith("text_encoder.") for n in names):
        return "sd (text encoder only)"
    return _guess_llm(adapter)


_DIFFUSION_FAMILIES = (("sdxl", "sdxl"), ("stablediffusionxl", "sdxl"), ("pony", "sdxl"), ("illustrious", "sdxl"),
                       ("noobai", "sdxl"), ("flux", "flux"), ("sd3", "sd3"), ("stablediffusion3", "sd3"),
                       ("stablediffusionv3", "sd3"), ("sd2", "sd2"), ("stablediffusion2", "sd2"),
                       ("stablediffusionv2", "sd2"), ("sd1", "sd1"), ("stablediffusion1", "sd1"),
                       ("stablediffusionv1", "sd1"))

# what a message calls each family ("diffusion": a UNet LoRA of no family we know, e.g. lolscan's pixel base)
FAMILY_NAMES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL",
                "sd3": "Stable Diffusion 3", "flux": "FLUX", "diffusion": "diffusion"}


def diffusion_kind(family: str) -> str | None:
    """`diffusion_family` of a `guess_family` answer, or "diffusion" for its other UNet/SD answers."""
    return diffusion_family(family) or ("diffusion" if family.startswith(("unet (", "sd (")) else None)


def diffusion_family(text: str) -> str | None:
    """sd1/sd2/sdxl/flux/sd3 from a free-text base model ("SD 1.5", "SDXL 1.0", "Pony", "sd1 (unet)"), else None."""
    key = re.sub(r"[\s._-]", "", text.lower())
    for needle, family in _DIFFUSION_FAMILIES:
        if needle in key:
            return family
    return None


def short_base_model(text: str) -> str:
    """The model id a base model description names in parentheses ("llama-style LLM, hidden 576 (org/Model)"
    → "org/Model"), as `guess_family` and cards write them; other text as it is."""
    if text.endswith(")") and "(" in text:
        inner = text[text.rindex("(") + 1 : -1]
        if "/" in inner:
            return inner
    return text


def diffusion_parts(names) -> str:
    """Which parts of a diffusion pipeline the module names adapt: "UNet", "UNet + text encoder", …"""
    names = list(names)
    parts = []
    if any(n.startswith("unet.") for n in names):
        parts.append("UNet")
    if any(n.startswith("transformer.") for n in names):
        parts.append("transformer")
    if any(n.startswith("text_encoder") for n in names):
        parts.append("text encoder")
    return " + ".join(parts) or "denoiser"


def _guess_llm(adapter: Adapter) -> str:
    config = adapter.config or {}
    base = config.get("base_model_name_or_path")
    hidden = Counter()
    arch = "unknown"
    for name, layer in adapter.layers.items():
        if re.search(r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$", name):
            arch = "llama-style"
            hidden[layer.m if not name.endswith("down_proj") else layer.n] += 1
        elif re.search(r"\.(c_attn|c_proj|c_fc)$", name):
            arch = "gpt2-style"
            hidden[layer.m if name.endswith(("c_attn", "c_fc")) else layer.n] += 1
        elif re.search(r"query_key_value|dense_h_to_4h", name):
            arch = "gpt-neox-style"
            hidden[layer.m] += 1
    text = arch if arch == "unknown" or not hidden else f"{arch} LLM, hidden {hidden.most_common(1)[0][0]}"
    return f"{text} ({base})" if base else text
