"""What `lolscan inspect` reports about an adapter: structure, per-module spectra, hashes, metadata."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .formats.family import guess_family
from .formats.peft_config import WEIGHT_NAMES
from .utils.files import sha256_file

if TYPE_CHECKING:  # torch only where spectra are computed: `lolscan.inspect_fast` reuses the rest without it
    from .adapter import Adapter, Layer

EFFECTIVE_RANK_RTOL = 1e-5  # singular values below σ_max·rtol count as zero


def module_stats(layer: Layer) -> dict[str, Any]:
    """Effective rank, Frobenius and spectral norm of ΔW from the r×r core (never forms ΔW)."""
    import torch

    finite = bool(torch.isfinite(layer.U).all() and torch.isfinite(layer.V).all())
    if not finite:
        return {"rank": layer.rank, "effective_rank": None, "frobenius": None, "spectral": None, "finite": False}
    sv = layer.singular_values()
    smax = float(sv.max()) if sv.numel() else 0.0
    return {
        "rank": layer.rank,
        "effective_rank": int((sv > smax * EFFECTIVE_RANK_RTOL).sum()) if smax > 0 else 0,
        "frobenius": float(torch.linalg.vector_norm(sv.double())),
        "spectral": smax,
        "finite": True,
    }


def file_hashes(path: Path) -> dict[str, str]:
    """SHA-256 of the weights file and its AutoV2 (first 10 hex, as Civitai/A1111 show it)."""
    weights = path
    if path.is_dir():
        for name in WEIGHT_NAMES:
            if (path / name).is_file():
                weights = path / name
                break
        else:
            return {}
    sha = sha256_file(weights).upper()
    return {"sha256": sha, "autov2": sha[:10]}


_KOHYA_DIGEST = (
    "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_base_model_version",
    "ss_sd_model_name", "ss_resolution", "ss_num_train_images", "ss_num_epochs", "ss_steps", "ss_learning_rate",
    "ss_unet_lr", "ss_text_encoder_lr", "ss_optimizer", "ss_mixed_precision", "ss_output_name", "ss_training_comment",
)
_MODELSPEC_DIGEST = ("title", "architecture", "author", "description", "date", "license", "trigger_phrase", "resolution")
_PEFT_DIGEST = ("peft_type", "base_model_name_or_path", "task_type", "r", "lora_alpha", "use_rslora", "use_dora",
                "target_modules", "rank_pattern", "alpha_pattern", "fan_in_fan_out", "modules_to_save", "peft_version")


def _lenient(value: str) -> Any:
    """kohya metadata is all strings: parse numbers/JSON where that works, keep 'None'/'Dynamic' as null + text."""
    if value in ("None", "Dynamic", ""):
        return None
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def metadata_digest(adapter: Adapter) -> dict[str, Any]:
    """The training facts worth showing, from whichever metadata the file carries."""
    out: dict[str, Any] = {}
    md = adapter.metadata.get("safetensors", {}) or {}
    for key in _KOHYA_DIGEST:
        if key in md:
            out[key] = _lenient(md[key])
    if "ss_tag_frequency" in md:
        freq = _lenient(md["ss_tag_frequency"])
        if isinstance(freq, dict):
            tags: Counter = Counter()
            for folder in freq.values():
                if isinstance(folder, dict):
                    tags.update({k: v for k, v in folder.items() if isinstance(v, (int, float))})
            out["top_tags"] = [t for t, _ in tags.most_common(10)]
    for key in _MODELSPEC_DIGEST:
        if f"modelspec.{key}" in md:
            out[f"modelspec.{key}"] = md[f"modelspec.{key}"]
    if "lora_adapter_metadata" in md:
        out["lora_adapter_metadata"] = _lenient(md["lora_adapter_metadata"])
    config = adapter.metadata.get("peft_config") or {}
    for key in _PEFT_DIGEST:
        if config.get(key) not in (None, {}, []):
            out[f"peft.{key}"] = config[key]
    src = adapter.metadata.get("source") or {}
    for key, value in src.items():
        if value not in (None, "", [], {}):
            out[f"source.{key}"] = value
    return out


def inspect_adapter(adapter: Adapter, path: Path | None = None) -> dict[str, Any]:
    """Everything `inspect` shows, as plain JSON-able data."""
    modules = {name: {"n": l.n, "m": l.m, "shape": list(l.shape), "kind": l.kind, "algo": l.algo,
                      "alpha": l.alpha, "scale": l.scale, "dora": l.magnitude is not None, **module_stats(l)}
               for name, l in adapter.layers.items()}
    ranks = adapter.ranks
    alphas = sorted({l.alpha for l in adapter.layers.values() if l.alpha is not None})
    scales = sorted({round(l.scale, 6) for l in adapter.layers.values()})
    report: dict[str, Any] = {
        "source": adapter.source,
        "format": adapter.format,
        "family": guess_family(adapter),
        "modules": len(adapter),
        "rank_min": min(ranks),
        "rank_max": max(ranks),
        "mixed_rank": adapter.mixed_rank,
        "alphas": alphas,
        "scales": scales,
        "dtype": adapter.dtype,
        "dora": any(l.magnitude is not None for l in adapter.layers.values()),
        "nonfinite_modules": [n for n, s in modules.items() if not s["finite"]],
        "extra_tensors": {k: list(v) for k, v in adapter.extra_tensors.items()},
        "warnings": adapter.warnings,
        "metadata": metadata_digest(adapter),
        "per_module": modules,
    }
    if path is not None and path.exists():
        report.update(file_hashes(path))
    return report
