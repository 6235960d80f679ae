"""Building exact canonical layers from raw up/down tensors."""
from __future__ import annotations

import math
import struct

import torch

from ..adapter import Layer
from ..errors import InputError, UnsupportedFormat, quoted
from .tensorfile import DTYPES, TensorFile

# safetensors dtypes whose single values `struct` reads exactly as torch converts them to float64.
_STRUCT_FORMATS = {"F64": "<d", "F32": "<f", "F16": "<e"}


def _check_float(t: torch.Tensor, key: str, path: str) -> None:
    if not (t.is_floating_point()):
        raise InputError(f"tensor {quoted(key)} has dtype {str(t.dtype).replace('torch.', '')}, expected floating point", path=path)


def as_float(t: torch.Tensor, key: str, path: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Return `t` as `dtype`, refusing integer/bool tensors where factors are expected."""
    _check_float(t, key, path)
    return t.to(dtype)


def scalar(t: torch.Tensor, key: str, path: str) -> float:
    """Read a 0-d (or single-element) alpha/scale tensor (its exact value as a Python float)."""
    if t.numel() != 1:
        raise InputError(f"tensor {quoted(key)} should hold one number, has shape {list(t.shape)}", path=path)
    _check_float(t, key, path)
    return t.item()


def scalar_of(tf: TensorFile, key: str) -> float:
    """`scalar` of tensor `key`, read straight from a safetensors file's bytes when it is one F16/F32/F64 value."""
    entry = tf.layout.get(key) if tf.layout is not None and tf.data is not None else None
    if entry is not None and entry[0] in _STRUCT_FORMATS and entry[3] - entry[2] == DTYPES[entry[0]][1]:
        return struct.unpack_from(_STRUCT_FORMATS[entry[0]], tf.data, entry[2])[0]
    return scalar(tf.tensors[key], key, tf.path)


def split_scale(up: torch.Tensor, down_t: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold scalar `s` evenly into both factors: U = sign(s)·√|s|·up, V = √|s|·down_t."""
    if s == 1.0:
        return up.float(), down_t.float()
    c = math.sqrt(abs(s))
    return (up * (c if s >= 0 else -c)).float(), (down_t * c).float()


def lora_layer(
    up: torch.Tensor,
    down: torch.Tensor,
    scale: float,
    *,
    name: str,
    path: str,
    keys: tuple[str, ...],
    mid: torch.Tensor | None = None,
    alpha: float | None = None,
) -> Layer:
    """A LoRA/LoCon module from `up` [out, r(, 1, 1)] and `down` [r, in(, kh, kw)] (+ Tucker `mid`)."""
    # float32 is exact enough for plain factors; the Tucker contraction is done in float64.
    work = torch.float64 if mid is not None else torch.float32
    up64 = as_float(up, keys[0], path, work)
    down64 = as_float(down, keys[-1], path, work)
    if up64.ndim < 2 or down64.ndim < 2:
        raise InputError(f"module {quoted(name)}: up/down must be at least 2-D, got {list(up.shape)} and {list(down.shape)}", path=path)
    r = down64.shape[0]
    if any(d != 1 for d in up64.shape[2:]):
        raise InputError(f"module {quoted(name)}: up weight {list(up.shape)} is not a 1×1 kernel", path=path)
    B = up64.reshape(up64.shape[0], -1)
    if mid is not None:
        mid64 = as_float(mid, f"{name}.lora_mid.weight", path)
        if not 3 <= mid64.ndim <= 5 or mid64.shape[0] != B.shape[1] or mid64.shape[1] != r:
            raise InputError(f"module {quoted(name)}: lora_mid {list(mid.shape)} does not pair with up {list(up.shape)} / down {list(down.shape)}", path=path)
        d = down64.reshape(r, -1)  # Tucker: down is [r, in, 1, 1]
        # M[a, i, h, w] = Σ_b mid[a, b, h, w] · down[b, i]
        A = torch.einsum("ab...,bi->ai...", mid64, d).reshape(mid64.shape[0], -1)
        kernel = tuple(mid64.shape[2:])
        in_ch = d.shape[1]
    else:
        A = down64.reshape(r, -1)
        kernel = tuple(down64.shape[2:])
        in_ch = down64.shape[1]
    if B.shape[1] != A.shape[0] and kernel and B.shape[1] and A.shape[0] % B.shape[1] == 0:
        raise UnsupportedFormat(
            f"module {quoted(name)}: grouped-convolution LoRA (up {list(up.shape)}, down {list(down.shape)}): its ΔW is "
            "block-structured, not a rank-r product; not supported (PEFT does not merge it either)", path=path)
    if B.shape[1] != A.shape[0]:
        raise InputError(
            f"module {quoted(name)}: rank mismatch between up {list(up.shape)} and down {list(down.shape)}", path=path
        )
    U, V = split_scale(B, A.T, scale)
    shape = (B.shape[0], in_ch, *kernel)
    return Layer(
        U=U, V=V, shape=shape, kind="conv" if kernel else "linear", algo="locon-tucker" if mid is not None else "lora",
        alpha=alpha, scale=scale, source_keys=keys,
    )


def dora_axis(magnitude: torch.Tensor, layer: Layer) -> str:
    """Which axis a DoRA magnitude normalises: per output row (PEFT, LyCORIS ≥3.2) or per input column."""
    flat = magnitude.reshape(-1)
    if magnitude.ndim >= 2 and magnitude.shape[0] == 1 and flat.numel() == layer.shape[1]:
        return "in"
    return "out"
