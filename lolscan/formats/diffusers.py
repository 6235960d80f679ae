"""diffusers LoRAs: old attention-processor keys and the current PEFT-style `unet.`/`transformer.` keys."""
from __future__ import annotations

from ..adapter import Adapter
from ..tensorfile import TensorFile
from .build import alpha_rule, build_layers, finish
from .grouping import group_keys
from .names import dotted_module_name
from .peft_config import peft_scale, split_component_metadata

COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "prior")
_OLD_TEXT_ENCODER = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


def looks_diffusers(tf: TensorFile) -> bool:
    keys = list(tf.tensors)
    if any(k.startswith(tuple(c + "." for c in COMPONENTS)) for k in keys):
        return True
    return any(("processor.to_" in k and "_lora." in k) or "lora_linear_layer" in k for k in keys)


def old_module_name(module: str) -> str:
    """Map a pre-PEFT diffusers module path onto the module it adapts."""
    name = dotted_module_name(module)
    head, _, last = name.rpartition(".")
    if name.startswith("text_encoder") and last in _OLD_TEXT_ENCODER:
        return f"{head}.{_OLD_TEXT_ENCODER[last]}"
    if last == "to_out":
        return f"{name}.0"
    return name


def from_tensors(tf: TensorFile, *, source: str) -> Adapter:
    modules, leftover = group_keys(tf.tensors)
    components = split_component_metadata(tf.metadata.get("lora_adapter_metadata"))

    def scale_of(module: str, rank: int, alpha: float | None):
        if alpha is not None:  # explicit network alphas win (converted kohya / Flux files)
            return alpha_rule()(module, rank, alpha)
        component, _, rest = module.partition(".")
        if component in components:
            return peft_scale(components[component], rest, rank)
        return 1.0, None  # diffusers' native convention: alpha == rank

    old = any(k.endswith(("_lora.down.weight", "_lora.up.weight")) for k in tf.tensors)
    built = build_layers(tf, modules, name_of=old_module_name if old else dotted_module_name, scale_of=scale_of)
    return finish("diffusers", tf, built, source=source, metadata={"safetensors": tf.metadata}, leftover=leftover)
