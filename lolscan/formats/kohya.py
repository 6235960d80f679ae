"""kohya sd-scripts / A1111 / LyCORIS files: `lora_unet_…`, `lora_te…` keys with `.alpha` tensors."""
from __future__ import annotations

from ..adapter import Adapter
from ..tensorfile import TensorFile
from .build import alpha_rule, build_layers, finish
from .grouping import group_keys
from .names import KOHYA_PREFIXES, kohya_module_name


def looks_kohya(tf: TensorFile) -> bool:
    if "ss_network_module" in tf.metadata:
        return True
    prefixes = tuple(p for p, _ in KOHYA_PREFIXES)
    return any(k.startswith(prefixes) for k in tf.tensors)


def from_tensors(tf: TensorFile, *, source: str) -> Adapter:
    modules, leftover = group_keys(tf.tensors)
    kohya_modules = {m: roles for m, roles in modules.items() if kohya_module_name(m) is not None}
    leftover += [k for m, roles in modules.items() if m not in kohya_modules for k in roles.values()]
    built = build_layers(tf, kohya_modules, name_of=lambda m: kohya_module_name(m) or m, scale_of=alpha_rule())
    module_kind = tf.metadata.get("ss_network_module", "")
    fmt = "lycoris" if module_kind.startswith("lycoris") or any(l.algo in ("loha", "lokr") for l in built.layers.values()) else "kohya"
    return finish(fmt, tf, built, source=source, metadata={"safetensors": tf.metadata}, leftover=leftover)
