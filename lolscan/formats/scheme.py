"""Which key scheme a tensor file uses, and the naming and scaling rules that go with it.

Pure functions of the keys, the metadata and adapter_config.json (no torch), shared by the full
parser (`lolscan.formats`) and the light reader processes (`lolscan.scan.lightread`), so both read a
file the same way. Detection order is docs/FORMATS.md §2's: kohya, PEFT, cloneofsimo, diffusers,
then dotted PEFT-style keys.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .stheader import FLOAT_DTYPES
from .names import KOHYA_PREFIXES, dotted_module_name, kohya_module_name
from .peft_config import module_path, peft_scale, split_component_metadata

# scale_of(module path, rank, alpha from the file or None) -> (scale, alpha used)
ScaleRule = Callable[[str, int, "float | None"], tuple[float, "float | None"]]

CLONEOFSIMO_KEY = re.compile(r"^(unet|text_encoder):(\d+):(up|down)$")
DIFFUSERS_COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "prior")
_OLD_TEXT_ENCODER = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


def looks_kohya(keys: Iterable[str], metadata: Mapping[str, str]) -> bool:
    if "ss_network_module" in metadata:
        return True
    prefixes = tuple(p for p, _ in KOHYA_PREFIXES)
    return any(k.startswith(prefixes) for k in keys)


def looks_cloneofsimo(keys: Iterable[str]) -> bool:
    return any(CLONEOFSIMO_KEY.match(k) for k in keys)


def looks_diffusers(keys: Iterable[str]) -> bool:
    keys = list(keys)
    if any(k.startswith(tuple(c + "." for c in DIFFUSERS_COMPONENTS)) for k in keys):
        return True
    return any(("processor.to_" in k and "_lora." in k) or "lora_linear_layer" in k for k in keys)


def scheme_of(keys: Iterable[str], metadata: Mapping[str, str]) -> str:
    """kohya, peft, cloneofsimo or diffusers (dotted keys of no known pipeline read as peft)."""
    keys = list(keys)
    if looks_kohya(keys, metadata):
        return "kohya"
    if any(k.startswith("base_model.model.") for k in keys):
        return "peft"
    if looks_cloneofsimo(keys):
        return "cloneofsimo"
    if looks_diffusers(keys):
        return "diffusers"
    return "peft"


def kohya_format(metadata: Mapping[str, str], algos: Iterable[str]) -> str:
    """A kohya-keyed file is reported as lycoris when its network module says so or it holds LoHa/LoKr."""
    module_kind = metadata.get("ss_network_module", "")
    return "lycoris" if module_kind.startswith("lycoris") or any(a in ("loha", "lokr") for a in algos) else "kohya"


def alpha_rule(default_alpha_is_rank: bool = True) -> ScaleRule:
    """kohya/LyCORIS/diffusers rule: s = alpha/r with alpha from the file; no alpha (or 0) ⇒ s = 1."""

    def rule(module: str, rank: int, alpha: float | None) -> tuple[float, float | None]:
        if alpha is None or (alpha == 0 and default_alpha_is_rank):
            return 1.0, None
        return alpha / rank, alpha

    return rule


def diffusers_scale_rule(metadata: Mapping[str, str]) -> ScaleRule:
    """Explicit network alphas win (converted kohya / Flux files), then `lora_adapter_metadata`'s
    per-component PEFT config, else diffusers' native convention (alpha == rank: scale 1)."""
    components = split_component_metadata(metadata.get("lora_adapter_metadata"))

    def rule(module: str, rank: int, alpha: float | None) -> tuple[float, float | None]:
        if alpha is not None:
            return alpha_rule()(module, rank, alpha)
        component, _, rest = module.partition(".")
        if component in components:
            return peft_scale(components[component], rest, rank)
        return 1.0, None

    return rule


def old_diffusers_keys(keys: Iterable[str]) -> bool:
    """Pre-PEFT diffusers attention-processor keys (``…to_q_lora.down.weight``)."""
    return any(k.endswith(("_lora.down.weight", "_lora.up.weight")) for k in keys)


def old_module_name(module: str) -> str:
    """Map a pre-PEFT diffusers module path onto the module it adapts."""
    name = dotted_module_name(module)
    head, _, last = name.rpartition(".")
    if name.startswith("text_encoder") and last in _OLD_TEXT_ENCODER:
        return f"{head}.{_OLD_TEXT_ENCODER[last]}"
    if last == "to_out":
        return f"{name}.0"
    return name


def peft_config_rule(config: dict[str, Any]) -> ScaleRule:
    """PEFT's alpha/r (or alpha/√r) from adapter_config.json, whatever alpha the file holds."""
    return lambda module, rank, alpha: peft_scale(config, module_path(module), rank)


def is_plain_pair(up_dtype: str | None, up: tuple[int, ...], down_dtype: str | None, down: tuple[int, ...]) -> bool:
    """True when `lora_layer` would read this up/down pair (no mid) without error or special case."""
    if up_dtype not in FLOAT_DTYPES or down_dtype not in FLOAT_DTYPES:
        return False
    if len(up) == 2 and len(down) == 2:  # linear, the usual case: the test below, spelled out
        return up[1] == down[0] and up[0] * up[1] * down[1] > 0
    return (
        len(up) >= 2 and len(down) >= 2
        and all(d == 1 for d in up[2:])
        and math.prod(up) > 0 and math.prod(down) > 0
        and math.prod(up[1:]) == down[0]
    )


UNDERSCORED_PAIR = ("_lora_down.weight", "_lora_up.weight")


def kohya_name_rule(modules: Mapping[str, Mapping[str, str]]) -> Callable[[str], "str | None"]:
    """Canonical names of kohya-keyed modules (None: no kohya prefix). Modules saved with kohya's
    underscores over diffusers' old attention-processor names (``lora_unet_unet_…_attn1_to_k_lora_down.weight``)
    are mapped as those names are (`old_module_name`: ``to_out`` is ``to_out.0``)."""
    underscored = {m for m, roles in modules.items() if any(k.endswith(UNDERSCORED_PAIR) for k in roles.values())}

    def name_of(module: str) -> str | None:
        name = kohya_module_name(module)
        return old_module_name(name) if name is not None and module in underscored else name

    return name_of
