"""The common case in bulk: plain up/down LoRA pairs, converted and scaled per file, not per tensor.

`lora_layer` reads one module at a time (a handful of tensor ops each). For the modules it would
read without complaint (floating up/down, no Tucker core, non-empty, ranks that pair), `PlainPairs`
converts all factors of a file to float32 in a few ops (`tensorfile.float32_copies`), hands out
views of them as U and V, folds the scales in place and checks for NaN/Inf once per buffer. The
results are bit-for-bit those of `lora_layer`; everything else still goes through it.
"""
from __future__ import annotations

import math

import torch

from ..adapter import Layer
from ..tensorfile import FLOAT_DTYPES, TensorFile, float32_copies


def is_plain_pair(up_dtype: str | None, up: tuple[int, ...], down_dtype: str | None, down: tuple[int, ...]) -> bool:
    """True when `lora_layer` would read this up/down pair (no mid) without error or special case."""
    return (
        up_dtype in FLOAT_DTYPES and down_dtype in FLOAT_DTYPES
        and len(up) >= 2 and len(down) >= 2
        and all(d == 1 for d in up[2:])
        and math.prod(up) > 0 and math.prod(down) > 0
        and math.prod(up[1:]) == down[0]
    )


class PlainPairs:
    """Float32 factors of a file's plain up/down modules, converted in bulk up front."""

    def __init__(self, tf: TensorFile, modules: dict[str, dict[str, str]]):
        self.tf = tf
        self.pairs: dict[str, tuple[str, str]] = {}  # module -> (up key, down key)
        for module, roles in modules.items():
            up, down = roles.get("up"), roles.get("down")
            if up is None or down is None or "mid" in roles:
                continue
            if is_plain_pair(tf.dtypes.get(up), tf.shape(up), tf.dtypes.get(down), tf.shape(down)):
                self.pairs[module] = (up, down)
        wanted = [k for pair in self.pairs.values() for k in pair]
        self.copies = float32_copies(tf, wanted) if wanted else {}
        self.made: list[tuple[str, Layer, torch.Tensor, torch.Tensor]] = []  # (name, layer, U's buffer, V's buffer)

    def layer(self, module: str, name: str, scale: float, *, alpha: float | None, keys: tuple[str, ...]) -> Layer | None:
        """The layer of a plain module, its factors still unscaled until `finish`; None for other modules."""
        pair = self.pairs.get(module)
        if pair is None:
            return None
        up, down = self.tf.shape(pair[0]), self.tf.shape(pair[1])
        (ubuf, uoff), (vbuf, voff) = self.copies[pair[0]], self.copies[pair[1]]
        n, r, cols = up[0], down[0], math.prod(down[1:])
        kernel = down[2:]
        U = ubuf.as_strided((n, r), (r, 1), uoff)  # up reshaped to n × r
        V = vbuf.as_strided((cols, r), (1, cols), voff)  # (down reshaped to r × in·kh·kw)ᵀ
        layer = Layer(U=U, V=V, shape=(n, down[1], *kernel), kind="conv" if kernel else "linear", alpha=alpha, scale=scale, source_keys=keys)
        self.made.append((name, layer, ubuf, vbuf))
        return layer

    def finish(self) -> set[str]:
        """Fold each layer's scale into its factors (as `split_scale` does); return the names of the
        layers whose factors are known to be finite."""
        by_buffer: dict[int, set[float]] = {}
        for _, layer, ubuf, vbuf in self.made:
            by_buffer.setdefault(id(ubuf), set()).add(layer.scale)
            by_buffer.setdefault(id(vbuf), set()).add(layer.scale)
        buffers = {id(b): b for b, _ in self.copies.values()}
        scaled_whole: set[int] = set()
        for key, scales in by_buffer.items():
            if len(scales) == 1 and (s := next(iter(scales))) > 0 and s != 1.0:  # one scale: one multiply
                buffers[key].mul_(math.sqrt(s))
                scaled_whole.add(key)
        for _, layer, ubuf, vbuf in self.made:
            s = layer.scale
            if s == 1.0:
                continue
            c = math.sqrt(abs(s))
            if id(ubuf) not in scaled_whole:
                layer.U.mul_(c if s >= 0 else -c)
            if id(vbuf) not in scaled_whole:
                layer.V.mul_(c)
        finite = {key for key, buf in buffers.items() if bool(torch.isfinite(buf.sum()))}
        return {name for name, _, ubuf, vbuf in self.made if id(ubuf) in finite and id(vbuf) in finite}
