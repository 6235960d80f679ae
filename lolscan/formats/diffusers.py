"""diffusers LoRAs: old attention-processor keys and the current PEFT-style `unet.`/`transformer.` keys."""
from __future__ import annotations

from ..adapter import Adapter
from .tensorfile import TensorFile
from .build import build_layers, finish
from .grouping import group_keys
from .names import dotted_module_name
from .scheme import diffusers_scale_rule, old_diffusers_keys, old_module_name
from .scheme import looks_diffusers as _looks_diffusers


def looks_diffusers(tf: TensorFile) -> bool:
    return _looks_diffusers(tf.tensors)


def from_tensors(tf: TensorFile, *, source: str) -> Adapter:
    modules, leftover = group_keys(tf.tensors)
    name_of = old_module_name if old_diffusers_keys(tf.tensors) else dotted_module_name
    built = build_layers(tf, modules, name_of=name_of, scale_of=diffusers_scale_rule(tf.metadata))
    return finish("diffusers", tf, built, source=source, metadata={"safetensors": tf.metadata}, leftover=leftover)
