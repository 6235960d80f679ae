"""cloneofsimo/lora files: index keys `unet:N:down|up`, `text_encoder:N:down|up`, rank in metadata.

The index is the order in which cloneofsimo's `lora` package injected LoRA into the SD1.x
diffusers UNet (of its era: ff registered before attn2) and the CLIP text encoder (HF's
CLIPAttention registers k, v, q, out). Mapping indices to names needs that order, kept here
as a small table; the tests check it against the fixtures' tensor shapes.
"""
from __future__ import annotations

import json

from ..adapter import Adapter
from ..errors import UnsupportedFormat
from .tensorfile import TensorFile
from .build import build_layers, finish
from .scheme import CLONEOFSIMO_KEY, alpha_rule

_KEY = CLONEOFSIMO_KEY

# SD1.x transformer blocks in module-registration order: down_blocks, up_blocks, then mid_block.
_SD1_TRANSFORMERS = (
    [f"down_blocks.{b}.attentions.{a}" for b in range(3) for a in range(2)]
    + [f"up_blocks.{b}.attentions.{a}" for b in range(1, 4) for a in range(3)]
    + ["mid_block.attentions.0"]
)
_ATTN = ("to_q", "to_k", "to_v", "to_out.0")


def looks_cloneofsimo(tf: TensorFile) -> bool:
    return any(_KEY.match(k) for k in tf.tensors)


def unet_names(with_geglu: bool) -> list[str]:
    names = []
    for t in _SD1_TRANSFORMERS:
        block = f"unet.{t}.transformer_blocks.0"
        names += [f"{block}.attn1.{p}" for p in _ATTN]
        if with_geglu:
            names.append(f"{block}.ff.net.0.proj")
        names += [f"{block}.attn2.{p}" for p in _ATTN]
    return names


def text_encoder_names(layers: int = 12) -> list[str]:
    return [f"text_encoder.text_model.encoder.layers.{i}.self_attn.{p}" for i in range(layers) for p in ("k_proj", "v_proj", "q_proj", "out_proj")]


def _targets(tf: TensorFile, component: str) -> list[str]:
    try:
        value = json.loads(tf.metadata.get(component, "[]"))
    except json.JSONDecodeError:
        return []
    return value if isinstance(value, list) else []


def from_tensors(tf: TensorFile, *, source: str) -> Adapter:
    indices: dict[str, dict[int, dict[str, str]]] = {"unet": {}, "text_encoder": {}}
    leftover = []
    for key in tf.tensors:
        m = _KEY.match(key)
        if m:
            indices[m[1]].setdefault(int(m[2]), {})[m[3]] = key
        else:
            leftover.append(key)
    n_unet = len(indices["unet"])
    tables = {
        "unet": unet_names(with_geglu="GEGLU" in _targets(tf, "unet") or n_unet == 144),
        "text_encoder": text_encoder_names(),
    }
    modules: dict[str, dict[str, str]] = {}
    for component, by_index in indices.items():
        table = tables[component]
        for i in sorted(by_index):
            if i >= len(table):
                raise UnsupportedFormat(
                    f"cloneofsimo {component} index {i} is beyond the SD1.x table ({len(table)} modules); "
                    "only SD1.x UNet / CLIP-L layouts are known", path=tf.path)
            modules[table[i]] = by_index[i]
    built = build_layers(tf, modules, name_of=lambda m: m, scale_of=alpha_rule())
    for name, layer in built.layers.items():  # the table is a claim about order: shapes must agree
        if name.endswith("attn2.to_k") and layer.m != 768:
            raise UnsupportedFormat(f"cloneofsimo layout does not match SD1.x: {name} has input {layer.m}, expected 768", path=tf.path)
    return finish("cloneofsimo", tf, built, source=source, metadata={"safetensors": tf.metadata}, leftover=leftover)
