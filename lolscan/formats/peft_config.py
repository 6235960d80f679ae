"""PEFT's adapter_config.json (reading it, its scaling rules) and diffusers' per-component
`lora_adapter_metadata`. No torch: the light reader processes use these too."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from ..errors import InputError, UnsupportedFormat

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")

# Adapter methods that change W in a way that needs the base weights to express as ΔW.
BASE_DEPENDENT_PEFT_TYPES = {"OFT", "BOFT", "IA3", "VERA", "FOURIERFT", "HRA", "LN_TUNING", "VBLORA", "BONE", "C3A", "SHIRA", "MISS"}
LOW_RANK_PEFT_TYPES = {"LORA", "LOHA", "LOKR", "ADALORA"}


def is_peft_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_NAME).is_file()


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable adapter_config.json ({type(exc).__name__})", path=path) from None
    if not isinstance(config, dict):
        raise InputError("adapter_config.json is not a JSON object", path=path)
    return config


def check_peft_type(config: dict[str, Any], path: Path | str) -> str:
    peft_type = str(config.get("peft_type") or "LORA").upper()
    if peft_type in BASE_DEPENDENT_PEFT_TYPES:
        raise UnsupportedFormat(f"PEFT {peft_type} adapters change W through the base weights; their ΔW cannot be expressed without the base model", path=path)
    if peft_type not in LOW_RANK_PEFT_TYPES:
        raise UnsupportedFormat(f"PEFT adapter type {peft_type!r} is not supported (LORA, LOHA, LOKR are)", path=path)
    return peft_type


def module_path(key_module: str) -> str:
    """Path inside the base model, as PEFT's patterns see it (no `base_model.model.` wrapper)."""
    return key_module.removeprefix("base_model.model.")


def pattern_value(patterns: dict[str, Any], module_path: str) -> Any | None:
    """PEFT's get_pattern_key: the first pattern (dict order) fully matching the path's tail wins."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module_path):
            return value
    return None


def peft_scale(config: dict[str, Any], module_path: str, rank: int) -> tuple[float, float]:
    """(scale, alpha) for one module: alpha/r, or alpha/√r with rsLoRA. `rank` comes from the tensors."""
    alpha = pattern_value(config.get("alpha_pattern") or {}, module_path)
    if alpha is None:
        alpha = config.get("lora_alpha", config.get("alpha", 8))
    alpha = float(alpha)
    if config.get("use_rslora"):
        return alpha / math.sqrt(rank), alpha
    return alpha / rank, alpha


def peft_lycoris_scale(config: dict[str, Any], module_path: str) -> tuple[float, float]:
    """(scale, alpha) of a PEFT LoHa/LoKr module: peft's ``alpha / r`` with r and alpha from
    rank_pattern/alpha_pattern or the config's r/alpha (LycorisConfig defaults 8/8), whatever
    the tensor shapes. Unlike LyCORIS/ComfyUI, a LoKr with both Kronecker factors full still
    gets ``alpha / r``, and alpha 0 gives scale 0."""
    rank = pattern_value(config.get("rank_pattern") or {}, module_path)
    if rank is None:
        rank = config.get("r", 8)
    alpha = pattern_value(config.get("alpha_pattern") or {}, module_path)
    if alpha is None:
        alpha = config.get("alpha", config.get("lora_alpha", 8))
    rank, alpha = float(rank), float(alpha)
    if not (rank > 0 and math.isfinite(alpha)):
        raise InputError(f"adapter_config.json: bad r={rank:g} / alpha={alpha:g} for module {module_path!r}")
    return alpha / rank, alpha


def split_component_metadata(raw: str | None) -> dict[str, dict[str, Any]]:
    """diffusers' `lora_adapter_metadata`: {"unet.r": 4, "unet.lora_alpha": 8, …} → {"unet": {...}}."""
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    if not isinstance(flat, dict):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        component, _, field = key.partition(".")
        if field:
            out.setdefault(component, {})[field] = value
    return out
