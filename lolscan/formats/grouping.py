"""Pairing tensors into modules by key name (never by file order)."""
from __future__ import annotations

import functools
from collections import OrderedDict

# (suffix, role). Longest suffixes first so `.lora_A.default.weight` wins over `.weight`.
_DOTTED_SUFFIXES: list[tuple[str, str]] = sorted(
    [
        (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
        (".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora_A", "down"), (".lora_B", "up"),
        (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_mid.weight", "mid"),
        (".lora.down.weight", "down"), (".lora.up.weight", "up"),
        ("_lora.down.weight", "down"), ("_lora.up.weight", "up"),
        (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
        (".lora_embedding_A", "emb_A"), (".lora_embedding_B", "emb_B"),
        (".lora_embedding_A.default", "emb_A"), (".lora_embedding_B.default", "emb_B"),
        (".lora_magnitude_vector", "magnitude"), (".lora_magnitude_vector.weight", "magnitude"),
        (".lora_magnitude_vector.default", "magnitude"), (".lora_magnitude_vector.default.weight", "magnitude"),
        (".dora_scale", "magnitude"), (".alpha", "alpha"), (".scale", "scale"),
        (".lora_B.bias", "bias"),
        (".hada_w1_a", "hada_w1_a"), (".hada_w1_b", "hada_w1_b"), (".hada_w2_a", "hada_w2_a"),
        (".hada_w2_b", "hada_w2_b"), (".hada_t1", "hada_t1"), (".hada_t2", "hada_t2"),
        (".lokr_w1", "lokr_w1"), (".lokr_w1_a", "lokr_w1_a"), (".lokr_w1_b", "lokr_w1_b"),
        (".lokr_w2", "lokr_w2"), (".lokr_w2_a", "lokr_w2_a"), (".lokr_w2_b", "lokr_w2_b"), (".lokr_t2", "lokr_t2"),
        (".oft_blocks", "oft"), (".oft_R.weight", "oft"), (".oft_r", "oft"), (".boft_R", "oft"),
        (".rescale", "oft"), (".on_input", "ia3"), (".ia3_l", "ia3"),
        (".diff", "diff"), (".diff_b", "diff"), (".w_norm", "diff"), (".b_norm", "diff"),
        (".a1.weight", "glora"), (".a2.weight", "glora"), (".b1.weight", "glora"), (".b2.weight", "glora"),
    ],
    key=lambda item: -len(item[0]),
)
# LyCORIS suffix variants that also carry ".weight" in some writers.
_DOTTED_SUFFIXES += [(s + ".weight", r) for s, r in _DOTTED_SUFFIXES if r.startswith(("hada_", "lokr_"))]
_DOTTED_SUFFIXES.sort(key=lambda item: -len(item[0]))


_BY_SUFFIX = dict(_DOTTED_SUFFIXES)
_MAX_DOTS = max(s.count(".") for s in _BY_SUFFIX)


@functools.lru_cache(maxsize=65536)  # folders of LoRAs for one base model repeat the same keys
def split_key(key: str) -> tuple[str, str] | None:
    """(module path, role) for a LoRA-family tensor key, or None when no known suffix matches."""
    # Candidate suffixes start at a '.' (or at the '_' of an old diffusers `to_q_lora.`); longest wins.
    dots = []
    i = len(key)
    while len(dots) < _MAX_DOTS and (i := key.rfind(".", 0, i)) >= 0:
        dots.append(i)
    for i in reversed(dots):
        role = _BY_SUFFIX.get(key[i:])
        if role is not None:
            return key[:i], role
        j = key.rfind("_", 0, i)
        if j >= 0 and key[j:i] == "_lora" and key[j:] in _BY_SUFFIX:
            return key[:j], _BY_SUFFIX[key[j:]]
        if key[i:] == ".weight" and key[j:i] in ("_down", "_up"):  # `…to_k_lora_down.weight`: kohya-style
            k = key.rfind("_", 0, j)  # underscores over old diffusers attention-processor names
            if k >= 0 and key[k:j] == "_lora":
                return key[:k], key[j + 1 : i]
    return None


def group_keys(keys) -> tuple["OrderedDict[str, dict[str, str]]", list[str]]:
    """Group tensor keys into {module path: {role: key}}; return the keys that fit no module."""
    modules: OrderedDict[str, dict[str, str]] = OrderedDict()
    leftover: list[str] = []
    for key in keys:
        hit = split_key(key)
        if hit is None:
            leftover.append(key)
            continue
        module, role = hit
        modules.setdefault(module, {})[role] = key
    return modules, leftover
