"""PEFT adapters: a folder with adapter_config.json + adapter_model.safetensors (or a bare weights file)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..adapter import Adapter
from ..errors import InputError
from .tensorfile import TensorFile, read_tensor_file
from .build import build_layers, finish
from .grouping import group_keys
from .names import dotted_module_name
from .peft_config import CONFIG_NAME, WEIGHT_NAMES, check_peft_type, is_peft_folder, module_path, peft_lycoris_scale, read_config  # noqa: F401
from .scheme import alpha_rule, peft_config_rule


def load_peft_folder(folder: Path, *, allow_pickle: bool) -> Adapter:
    config = read_config(folder / CONFIG_NAME)
    check_peft_type(config, folder / CONFIG_NAME)
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            tf = read_tensor_file(folder / name, allow_pickle=allow_pickle)
            return from_tensors(tf, config, source=str(folder))
    raise InputError(f"PEFT folder has no {' or '.join(WEIGHT_NAMES)}", path=folder)


def from_tensors(tf: TensorFile, config: dict[str, Any] | None, *, source: str) -> Adapter:
    """``config``: the adapter_config.json beside the weights (even an empty one: peft's defaults
    apply), or None for weights without one (alphas from the file, else scale 1)."""
    # fan_in_fan_out (GPT-2 Conv1D) leaves the factor shapes unchanged: ΔW is still [out, in].
    modules, leftover = group_keys(tf.tensors)
    if config is not None:
        built = build_layers(
            tf, modules,
            name_of=dotted_module_name,
            scale_of=peft_config_rule(config),
            peft_lycoris=lambda module: peft_lycoris_scale(config, module_path(module)),
        )
    else:  # weights without adapter_config.json: alphas from the file if any, else scale 1
        built = build_layers(tf, modules, name_of=dotted_module_name, scale_of=alpha_rule(), peft_lycoris=lambda module: None)
        if not any(layer.alpha is not None for layer in built.layers.values()):
            built.warnings.append("no adapter_config.json and no alpha tensors: scale assumed to be 1")
    config = config if config is not None else {}
    declared = config.get("r")
    for name, layer in built.layers.items():
        # LoHa/LoKr ranks are products (r², rank(W₁)·r), not comparable with r.
        if declared and layer.algo == "lora" and layer.rank != declared and not _in_rank_pattern(config, name):
            built.warnings.append(f"{name}: rank {layer.rank} differs from r={declared} and no rank_pattern covers it")
            break
    metadata = {"peft_config": config, **({"safetensors": tf.metadata} if tf.metadata else {})}
    return finish("peft", tf, built, source=source, metadata=metadata, config=config, leftover=leftover)


def _in_rank_pattern(config: dict[str, Any], name: str) -> bool:
    from .peft_config import pattern_value

    return pattern_value(config.get("rank_pattern") or {}, module_path(name), "rank_pattern") is not None
