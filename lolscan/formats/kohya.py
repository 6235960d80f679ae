"""kohya sd-scripts / A1111 / LyCORIS files: `lora_unet_…`, `lora_te…` keys with `.alpha` tensors."""
from __future__ import annotations

import torch

from ..adapter import Adapter
from .tensorfile import TensorFile
from .build import build_layers, finish
from .grouping import group_keys
from .names import kohya_module_name
from .scheme import alpha_rule, kohya_format, kohya_name_rule
from .scheme import looks_kohya as _looks_kohya


def looks_kohya(tf: TensorFile) -> bool:
    return _looks_kohya(tf.tensors, tf.metadata)


def from_tensors(tf: TensorFile, *, source: str) -> Adapter:
    modules, leftover = group_keys(tf.tensors)
    kohya_modules = {m: roles for m, roles in modules.items() if kohya_module_name(m) is not None}
    leftover += [k for m, roles in modules.items() if m not in kohya_modules for k in roles.values()]
    name_of = kohya_name_rule(kohya_modules)
    built = build_layers(tf, kohya_modules, name_of=lambda m: name_of(m) or m, scale_of=alpha_rule())
    built.warnings += _split_qkv_notes(tf, kohya_modules)
    fmt = kohya_format(tf.metadata, (layer.algo for layer in built.layers.values()))
    return finish(fmt, tf, built, source=source, metadata={"safetensors": tf.metadata}, leftover=leftover)


# Flux modules that kohya's `split_qkv` saves as k stacked LoRAs (sizes of the output splits).
_SPLITS = {"attn_qkv": (1, 1, 1), "linear1": (3072, 3072, 3072, 12288)}


def _split_qkv_notes(tf: TensorFile, modules: dict[str, dict[str, str]]) -> list[str]:
    """Flag Flux `split_qkv` files: block-diagonal lora_up of k blocks, alpha left as trained for rank R/k.

    Loaders (ComfyUI, diffusers, kohya) apply alpha/R, which is what lolscan folds in too; the
    strength at training time was alpha/(R/k) (kohya-ss/sd-scripts#2204), so say so.
    """
    notes = []
    suffixes = tuple(_SPLITS)
    for module, roles in modules.items():
        if not module.endswith(suffixes):
            continue
        kind = next((k for k in _SPLITS if module.endswith(k)), None)
        if kind is None or "up" not in roles or "alpha" not in roles:
            continue
        up = tf.tensors[roles["up"]].float().reshape(tf.tensors[roles["up"]].shape[0], -1)
        sizes = _SPLITS[kind]
        k = len(sizes)
        if up.shape[1] % k:
            continue
        rows = [up.shape[0] * s // sum(sizes) for s in sizes]
        if sum(rows) != up.shape[0]:
            continue
        r = up.shape[1] // k
        blocks = torch.split(up, rows, dim=0)
        if all(torch.count_nonzero(torch.cat([b[:, : i * r], b[:, (i + 1) * r :]], 1)) == 0 for i, b in enumerate(blocks)):
            alpha = float(tf.tensors[roles["alpha"]].float().reshape(-1)[0])
            notes.append(f"{module}: split_qkv LoRA ({k}×rank {r}); scored at alpha/{k * r} = {alpha / (k * r):.4g} as loaders apply it, "
                         f"trained at alpha/{r} = {alpha / r:.4g}")
    return notes
