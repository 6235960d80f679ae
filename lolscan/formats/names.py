"""Canonical module names, independent of the key scheme a file used.

Canonical names are dotted module paths with a component prefix for diffusion pipelines
(``unet.…``, ``text_encoder.…``, ``text_encoder_2.…``, ``transformer.…``) using diffusers'
module paths, and the bare base-model path for LLM adapters (``model.layers.0.self_attn.q_proj``).
kohya's underscored names are turned back into dotted paths; SDXL's SGM/LDM block names are
mapped onto diffusers' (as diffusers' own converter does).
"""
from __future__ import annotations

import functools
import re

KOHYA_PREFIXES: tuple[tuple[str, str], ...] = (
    ("lora_unet_", "unet"),
    ("lora_te1_", "text_encoder"),
    ("lora_te2_", "text_encoder_2"),
    ("lora_te3_", "text_encoder_3"),
    ("lora_te_", "text_encoder"),
    ("lora_prior_unet_", "prior"),
    ("lora_transformer_", "transformer"),
    ("lycoris_", ""),
)

# Multi-word identifiers found in module paths, longest first within each entry's first word.
_COMPOUNDS = sorted(
    {
        "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "single_transformer_blocks",
        "to_q", "to_k", "to_v", "to_out", "to_add_out", "add_q_proj", "add_k_proj", "add_v_proj",
        "proj_in", "proj_out", "proj_mlp", "time_emb_proj", "conv_shortcut", "conv_in", "conv_out",
        "time_embedding", "time_embed", "label_emb", "linear_1", "linear_2", "ff_context", "norm1_context", "norm_out",
        "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "o_proj", "gate_proj",
        "up_proj", "down_proj", "embed_tokens", "lm_head", "c_attn", "c_proj", "c_fc",
        "input_blocks", "output_blocks", "middle_block", "in_layers", "out_layers", "emb_layers",
        "skip_connection", "double_blocks", "single_blocks", "img_attn", "txt_attn", "img_mlp",
        "txt_mlp", "img_mod", "txt_mod", "final_layer", "self_attention", "query_key_value",
        "dense_h_to_4h", "dense_4h_to_h", "x_embedder", "context_embedder", "time_text_embed",
        "timestep_embedder", "guidance_embedder", "text_embedder", "norm_added_q", "norm_added_k",
        "shared", "relative_attention_bias", "DenseReluDense", "mod_lin", "modulation_lin",
        "attn_qkv", "attn_proj", "word_embeddings", "position_embedding", "token_embedding",
    },
    key=lambda s: -s.count("_"),
)
_BY_HEAD: dict[str, list[list[str]]] = {}
for _c in _COMPOUNDS:  # longest first within each head word
    _BY_HEAD.setdefault(_c.split("_", 1)[0], []).append(_c.split("_"))


@functools.lru_cache(maxsize=65536)
def kohya_to_dotted(path: str) -> str:
    """``down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0`` → dotted path."""
    parts = path.split("_")
    out: list[str] = []
    i = 0
    while i < len(parts):
        for cp in _BY_HEAD.get(parts[i], ()):
            if parts[i : i + len(cp)] == cp:
                out.append("_".join(cp))
                i += len(cp)
                break
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


_RESNET_SGM = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2", "out_layers.3": "conv2",
    "emb_layers.1": "time_emb_proj", "skip_connection": "conv_shortcut",
}


def _resnet_inner(rest: str) -> str:
    for sgm, diff in _RESNET_SGM.items():
        if rest == sgm or rest.startswith(sgm + "."):
            return diff + rest[len(sgm):]
    return rest


def sgm_to_diffusers(path: str) -> str:
    """Map SGM/LDM UNet paths (kohya's SDXL names) onto diffusers' UNet2DConditionModel paths."""
    m = re.match(r"input_blocks\.(\d+)\.(\d+)(?:\.(.+))?$", path)
    if m:
        i, j, rest = int(m[1]), int(m[2]), m[3] or ""
        if i == 0:
            return "conv_in"
        block, idx = divmod(i - 1, 3)
        if rest.startswith("op"):
            return f"down_blocks.{block}.downsamplers.0.conv"
        return f"down_blocks.{block}.resnets.{idx}.{_resnet_inner(rest)}" if j == 0 else f"down_blocks.{block}.attentions.{idx}.{rest}"
    m = re.match(r"middle_block\.(\d+)\.(.+)$", path)
    if m:
        j, rest = int(m[1]), m[2]
        if j == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{j // 2}.{_resnet_inner(rest)}"
    m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.+)$", path)
    if m:
        i, j, rest = int(m[1]), int(m[2]), m[3]
        block, idx = divmod(i, 3)
        if j == 0:
            return f"up_blocks.{block}.resnets.{idx}.{_resnet_inner(rest)}"
        if rest.startswith("conv"):
            return f"up_blocks.{block}.upsamplers.0.conv"
        return f"up_blocks.{block}.attentions.{idx}.{rest}"
    m = re.match(r"(time_embed|label_emb\.0)\.(0|2)$", path)
    if m:
        return f"{'time_embedding' if m[1] == 'time_embed' else 'add_embedding'}.linear_{1 if m[2] == '0' else 2}"
    if path == "out.2":
        return "conv_out"
    return path


@functools.lru_cache(maxsize=65536)
def kohya_module_name(module: str) -> str | None:
    """Canonical name for a kohya-style module (``lora_unet_…``); None if it has no known prefix."""
    for prefix, component in KOHYA_PREFIXES:
        if module.startswith(prefix):
            dotted = kohya_to_dotted(module[len(prefix):])
            if component == "unet" and (dotted.startswith(("input_blocks", "middle_block", "output_blocks", "time_embed.", "label_emb.")) or dotted == "out.2"):
                dotted = sgm_to_diffusers(dotted)
            if component == "unet" and dotted.startswith("unet."):  # `lora_unet_unet_…`: the diffusers prefix kept
                dotted = dotted[len("unet."):]
            if component == "unet" and dotted.startswith(("double_blocks", "single_blocks")):
                component = "transformer"  # Flux trained by kohya: BFL module names
            return f"{component}.{dotted}" if component else dotted
    return None


_UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "time_embedding.", "add_embedding.")


def dotted_module_name(path: str) -> str:
    """Canonical name for a dotted module path (PEFT, diffusers): strip wrappers, add the component."""
    for wrapper in ("base_model.model.",):
        if path.startswith(wrapper):
            path = path[len(wrapper):]
    path = path.replace(".processor.", ".")
    if path.startswith(_UNET_ROOTS):
        path = "unet." + path
    elif path.startswith("text_model."):
        path = "text_encoder." + path
    return path
