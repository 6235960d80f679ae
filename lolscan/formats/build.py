"""Turning grouped tensors into canonical layers, whatever the key scheme."""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..adapter import Adapter, Layer
from ..errors import InputError, LolscanError, UnsupportedFormat, elide, quoted
from .tensorfile import TensorFile
from .common import as_float, dora_axis, lora_layer, scalar_of, split_scale
from .plain import PlainPairs
from .scheme import ScaleRule


_REFUSED = {
    "oft": "OFT/BOFT (orthogonal finetuning) multiplies the base weight; its ΔW cannot be expressed without the base model",
    "ia3": "IA³ rescales the base weight; its ΔW cannot be expressed without the base model",
    "glora": "GLoRA has a base-weight-dependent part; its ΔW cannot be expressed without the base model",
}


@dataclass
class Built:
    layers: dict[str, Layer] = field(default_factory=dict)
    extras: dict[str, tuple[int, ...]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    finite: set[str] = field(default_factory=set)  # layers already known to hold no NaN/Inf


def build_layers(
    tf: TensorFile,
    modules: dict[str, dict[str, str]],
    *,
    name_of: Callable[[str], str],
    scale_of: ScaleRule,
    peft_lycoris: "Callable[[str], tuple[float, float] | None] | None" = None,
) -> Built:
    """``peft_lycoris``: the tensors are PEFT LoHa/LoKr (``LycorisConfig``) ones, not kohya-style
    LyCORIS: PEFT's Conv1d LoKr layout applies, and for each module it returns peft's
    ``(scale, alpha)`` (``alpha / r`` from adapter_config.json), or None when there is no
    config (then the LyCORIS rule with the file's alpha, if any, is used)."""
    out = Built()
    plain = PlainPairs(tf, modules)
    for module, roles in modules.items():
        try:
            _module(out, tf, plain, module, roles, name_of=name_of, scale_of=scale_of, peft_lycoris=peft_lycoris)
        except LolscanError as exc:
            if exc.path is None:  # raised by a helper that does not know the file (a scale rule, a config value)
                raise InputError(f"module {quoted(module)}: {exc}", path=tf.path) from None
            raise
        except (ArithmeticError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as exc:
            # shapes no check above foresaw: one line naming the module, never a traceback
            raise InputError(f"module {quoted(module)}: malformed tensors ({type(exc).__name__}: {elide(str(exc), 120)})", path=tf.path) from None
    out.finite = plain.finish()
    return out


def _module(out: Built, tf: TensorFile, plain: PlainPairs, module: str, roles: dict[str, str], *, name_of: Callable[[str], str],
            scale_of: ScaleRule, peft_lycoris: "Callable[[str], tuple[float, float] | None] | None") -> None:
    """Read one module into ``out`` (see `build_layers`)."""
    t = tf.tensors
    if not _REFUSED.keys().isdisjoint(roles):
        for role, reason in _REFUSED.items():
            if role in roles:
                raise UnsupportedFormat(f"module {quoted(module)}: {reason}; lolscan reads low-rank adapters only", path=tf.path)
    name = name_of(module)
    alpha = scalar_of(tf, roles["alpha"]) if "alpha" in roles else None
    if alpha == 0:
        out.warnings.append(f"{elide(module)}: alpha is 0; read as alpha = rank (kohya/LyCORIS), ComfyUI would disable it")
    keys = tuple(sorted(roles.values()))
    layer: Layer | None = None
    if "up" in roles or "down" in roles:
        if not ("up" in roles and "down" in roles):
            missing = "down" if "up" in roles else "up"
            raise InputError(f"module {quoted(module)} has no {missing} weight to pair with", path=tf.path)
        up_shape, down_shape = tf.shape(roles["up"]), tf.shape(roles["down"])
        if len(up_shape) < 2 or len(down_shape) < 2:
            raise InputError(f"module {quoted(module)}: up/down must be at least 2-D, got {list(up_shape)} and {list(down_shape)}", path=tf.path)
        if 0 in up_shape or 0 in down_shape:
            raise InputError(f"module {quoted(module)}: empty factors (rank 0 or a zero dimension): up {list(up_shape)}, down {list(down_shape)}", path=tf.path)
        rank = down_shape[0]
        s, used_alpha = scale_of(module, rank, alpha)
        if "scale" in roles:  # A1111's explicit scale overrides alpha/dim
            s = scalar_of(tf, roles["scale"])
        layer = plain.layer(module, name, s, alpha=used_alpha, keys=keys)
        if layer is None:
            layer = lora_layer(t[roles["up"]], t[roles["down"]], s, name=module, path=tf.path, keys=keys,
                               mid=t[roles["mid"]] if "mid" in roles else None, alpha=used_alpha)
    elif "emb_A" in roles and "emb_B" in roles:
        A = as_float(t[roles["emb_A"]], roles["emb_A"], tf.path)  # [r, num_embeddings]
        B = as_float(t[roles["emb_B"]], roles["emb_B"], tf.path)  # [dim, r]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1] or A.numel() == 0 or B.numel() == 0:
            raise InputError(f"module {quoted(module)}: embedding factors {list(A.shape)} / {list(B.shape)} do not pair", path=tf.path)
        s, used_alpha = scale_of(module, A.shape[0], alpha)
        # Embedding weight is [num_embeddings, dim] and ΔW = s·(B A)ᵀ = s·Aᵀ Bᵀ.
        U, V = split_scale(A.T, B, s)
        layer = Layer(U=U, V=V, shape=(A.shape[1], B.shape[0]), kind="embedding", alpha=used_alpha, scale=s, source_keys=keys)
    elif any(r.startswith("hada_") for r in roles) or any(r.startswith("lokr_") for r in roles):
        if peft_lycoris is not None:
            layer = _lycoris_layer(tf, module, roles, alpha, peft=True, peft_scale=peft_lycoris(module), name=name)
            if layer.scale == 0:
                out.warnings.append(f"{elide(module)}: alpha is 0, so PEFT applies this module with scale 0")
        else:
            layer = _lycoris_layer(tf, module, roles, alpha, name=name)
    elif "diff" in roles:
        for k in roles.values():
            out.extras[k] = tf.shape(k)
        out.warnings.append(f"{elide(module)}: full-weight difference (not low-rank) reported, not scored")
        return
    else:
        for k in roles.values():
            out.extras[k] = tf.shape(k)
        return
    if "magnitude" in roles:
        mag = as_float(t[roles["magnitude"]], roles["magnitude"], tf.path).float()
        layer.magnitude = mag.reshape(-1)
        layer.dora_axis = dora_axis(mag, layer)
    if "bias" in roles:
        out.extras[roles["bias"]] = tf.shape(roles["bias"])
    if name in out.layers:
        raise InputError(f"two entries map to the same module {quoted(name)}", path=tf.path)
    out.layers[name] = layer


# diffusers UNet modules that are 3×3 convolutions in every Stable Diffusion UNet (SD1/2, SDXL).
_UNET_3X3 = re.compile(r"unet\.(?:(?:down_blocks|up_blocks)\.\d+\.resnets\.\d+\.conv[12]|mid_block\.resnets\.\d+\.conv[12]"
                       r"|conv_in|conv_out|down_blocks\.\d+\.downsamplers\.0\.conv|up_blocks\.\d+\.upsamplers\.0\.conv)")


def _kernel_from_name(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """LoHa/LoKr factors that store a conv's kernel flattened (LyCORIS's 2023 layout: ``lokr_w2_b
    [r, d·3·3]``, ``hada_w1_b [r, in·3·3]``) give a 2-D ``out × in·9`` shape; for the UNet modules
    that are 3×3 convolutions the shape is the conv weight's. The factors (ΔW flattened) are the same."""
    if len(shape) == 2 and shape[1] % 9 == 0 and _UNET_3X3.fullmatch(name):
        return (shape[0], shape[1] // 9, 3, 3)
    return shape


def _lycoris_layer(tf: TensorFile, module: str, roles: dict[str, str], alpha: float | None, *, peft: bool = False,
                   peft_scale: "tuple[float, float] | None" = None, name: str = "") -> Layer:
    """``peft``: PEFT key conventions (Conv1d LoKr layout); ``peft_scale``: peft's (scale, alpha)
    from adapter_config.json, replacing the LyCORIS/ComfyUI rule (which, for a LoKr with both
    factors full, ignores alpha); ``name``: the canonical module name (see `_kernel_from_name`)."""
    from . import lycoris

    t = {role: as_float(tf.tensors[key], key, tf.path) for role, key in roles.items() if role not in ("alpha", "scale", "magnitude")}
    keys = tuple(sorted(roles.values()))
    try:
        if "hada_w1_a" in t:
            s = lycoris.lycoris_scale(alpha, t, "loha") if peft_scale is None else peft_scale[0]
            out_shape = _loha_shape(t)
            U, V = lycoris.loha_factors(t["hada_w1_a"], t["hada_w1_b"], t["hada_w2_a"], t["hada_w2_b"], scale=s,
                                        t1=t.get("hada_t1"), t2=t.get("hada_t2"), out_shape=out_shape)
            algo = "loha"
        else:
            s = lycoris.lycoris_scale(alpha, t, "lokr") if peft_scale is None else peft_scale[0]
            out_shape = _lokr_shape(t)
            kw = {k.removeprefix("lokr_").replace("_", ""): v for k, v in t.items()}
            # PEFT's Conv1d LoKr with a full W₂ kron's a 2-D W₁ with a 3-D W₂ (see lokr_factors).
            conv1d = peft and "lokr_w2" in t and t["lokr_w2"].ndim == 3
            U, V = lycoris.lokr_factors(scale=s, out_shape=out_shape, peft_conv1d=conv1d, **kw)
            algo = "lokr"
    except InputError as exc:
        raise InputError(f"module {quoted(module)}: {exc}", path=tf.path) from None
    except (KeyError, RuntimeError, ValueError) as exc:
        raise InputError(f"module {quoted(module)}: malformed LyCORIS tensors ({exc})", path=tf.path) from None
    if peft_scale is not None:
        alpha = peft_scale[1]
    out_shape = _kernel_from_name(name, out_shape)
    return Layer(U=U.float(), V=V.float(), shape=out_shape, kind="conv" if len(out_shape) > 2 else "linear",
                 algo=algo, alpha=alpha, scale=s, source_keys=keys)


def _loha_shape(t: dict[str, torch.Tensor]) -> tuple[int, ...]:
    if "hada_t1" in t:  # Tucker: w_a [r, out], w_b [r, in], t [r, r, kh, kw]
        return (t["hada_w1_a"].shape[1], t["hada_w1_b"].shape[1], *t["hada_t1"].shape[2:])
    return (t["hada_w1_a"].shape[0], t["hada_w1_b"].shape[1])


def _lokr_shape(t: dict[str, torch.Tensor]) -> tuple[int, ...]:
    w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
    if "lokr_w2" in t:
        w2_shape = tuple(t["lokr_w2"].shape)
    elif "lokr_t2" in t:
        w2_shape = (t["lokr_w2_a"].shape[1], t["lokr_w2_b"].shape[1], *t["lokr_t2"].shape[2:])
    else:
        w2_shape = (t["lokr_w2_a"].shape[0], t["lokr_w2_b"].shape[1])
    a, c = w1.shape
    return (a * w2_shape[0], c * w2_shape[1], *w2_shape[2:])


def layer_finite(layer: Layer) -> bool:
    # Fast path: a finite sum means every entry is finite; otherwise look properly.
    if torch.isfinite(layer.U.sum() + layer.V.sum()):
        return True
    return bool(torch.isfinite(layer.U).all() and torch.isfinite(layer.V).all())


def finish(fmt: str, tf: TensorFile, built: Built, *, source: str, metadata: dict, config: dict | None = None,
           leftover: list[str] = ()) -> Adapter:
    extras = dict(built.extras)
    for k in leftover:
        extras[k] = tf.shape(k)
    if not built.layers:
        pairs = _unrecognised_pairs(extras)
        if pairs:
            raise UnsupportedFormat(f"contains no LoRA layers lolscan can read: found {pairs[0]} down/up pairs whose module names "
                                    f"were not recognised (e.g. {quoted(pairs[1], 120)})", path=tf.path)
        raise UnsupportedFormat("contains no LoRA layers lolscan can read" + (f" (found {len(extras)} other tensors)" if extras else ""), path=tf.path)
    dtype = _main_dtype(tf, built.layers)
    warnings = list(built.warnings)
    bad = [n for n, layer in built.layers.items() if n not in built.finite and not layer_finite(layer)]
    if bad:
        warnings.append(f"{len(bad)} module(s) hold NaN/Inf values, e.g. {bad[0]}")
    return Adapter(layers=built.layers, format=fmt, source=source, metadata=metadata, config=config or {},
                   extra_tensors=extras, warnings=warnings, dtype=dtype, nonfinite=bad)


_DOWN_UP = re.compile(r"(.*?)[._](?:lora[._])?(down|up|A|B)(?:\.weight)?")


def _unrecognised_pairs(keys) -> tuple[int, str] | None:
    """(number of down/up pairs, one of their keys) among tensors no reader took, by key shape alone."""
    found: dict[str, set[str]] = {}
    for k in keys:
        m = _DOWN_UP.fullmatch(k)
        if m and ("lora" in k.lower()):
            found.setdefault(m[1], set()).add(m[2].lower().replace("a", "down").replace("b", "up"))
    pairs = [m for m, roles in found.items() if roles == {"down", "up"}]
    return (len(pairs), next(k for k in keys if k.startswith(pairs[0]))) if pairs else None


def _main_dtype(tf: TensorFile, layers: dict[str, Layer]) -> str:
    """The most common dtype name among the tensors the layers were read from."""
    kinds = set(tf.dtypes.values())
    if len(kinds) == 1 and all(layer.source_keys for layer in layers.values()):  # one dtype in the whole file
        return kinds.pop()
    lora_keys = dict.fromkeys(k for layer in layers.values() for k in layer.source_keys)  # ordered: a tie goes to the first module's dtype
    dtypes = Counter(tf.dtypes[k] for k in lora_keys if k in tf.dtypes)
    return dtypes.most_common(1)[0][0] if dtypes else ""
