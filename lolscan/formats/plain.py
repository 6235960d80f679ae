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
from .tensorfile import TensorFile, float32_copies
from .scheme import is_plain_pair


class PlainPairs:
    """Float32 factors of a file's plain up/down modules, converted in bulk up front."""

    def __init__(self, tf: TensorFile, modules: dict[str, dict[str, str]]):
        self.pairs: dict[str, tuple[str, str, tuple[int, ...], tuple[int, ...]]] = {}  # module -> up/down keys and shapes
        dtypes = tf.dtypes
        for module, roles in modules.items():
            up, down = roles.get("up"), roles.get("down")
            if up is None or down is None or "mid" in roles:
                continue
            up_shape, down_shape = tf.shape(up), tf.shape(down)
            if is_plain_pair(dtypes.get(up), up_shape, dtypes.get(down), down_shape):
                self.pairs[module] = (up, down, up_shape, down_shape)
        wanted = [k for pair in self.pairs.values() for k in pair[:2]]
        self.copies = float32_copies(tf, wanted) if wanted else {}
        self.made: list[tuple[str, Layer, torch.Tensor, torch.Tensor]] = []  # (name, layer, U's buffer, V's buffer)

    def layer(self, module: str, name: str, scale: float, *, alpha: float | None, keys: tuple[str, ...]) -> Layer | None:
        """The layer of a plain module, its factors still unscaled until `finish`; None for other modules."""
        pair = self.pairs.get(module)
        if pair is None:
            return None
        up_key, down_key, up, down = pair
        (ubuf, uoff), (vbuf, voff) = self.copies[up_key], self.copies[down_key]
        n, r = up[0], down[0]
        cols = down[1] if len(down) == 2 else math.prod(down[1:])
        kernel = down[2:]
        U = ubuf.as_strided((n, r), (r, 1), uoff)  # up reshaped to n × r
        V = vbuf.as_strided((cols, r), (1, cols), voff)  # (down reshaped to r × in·kh·kw)ᵀ
        layer = Layer(U=U, V=V, shape=(n, down[1], *kernel), kind="conv" if kernel else "linear", alpha=alpha, scale=scale, source_keys=keys)
        self.made.append((name, layer, ubuf, vbuf))
        return layer

    def finish(self) -> set[str]:
        """Fold each layer's scale into its factors (as `split_scale` does); return the names of the
        layers whose factors are known to be finite."""
        buffers = {id(b): b for b, _ in self.copies.values()}
        if any(layer.scale != 1.0 for _, layer, _, _ in self.made):
            self._scale(buffers)
        finite = {key for key, buf in buffers.items() if bool(torch.isfinite(buf.sum()))}
        if len(finite) == len(buffers):
            return {name for name, _, _, _ in self.made}
        return {name for name, _, ubuf, vbuf in self.made if id(ubuf) in finite and id(vbuf) in finite}

    def _scale(self, buffers: dict[int, torch.Tensor]) -> None:
        """U = sign(s)·√|s|·up, V = √|s|·downᵀ in place; one multiply per buffer whose layers share one s > 0."""
        scales: dict[int, set[float]] = {}
        for _, layer, ubuf, vbuf in self.made:
            scales.setdefault(id(ubuf), set()).add(layer.scale)
            scales.setdefault(id(vbuf), set()).add(layer.scale)
        whole: set[int] = set()
        for key, found in scales.items():
            if len(found) == 1 and (s := next(iter(found))) > 0 and s != 1.0:
                buffers[key].mul_(math.sqrt(s))
                whole.add(key)
        for _, layer, ubuf, vbuf in self.made:
            s = layer.scale
            if s == 1.0:
                continue
            c = math.sqrt(abs(s))
            if id(ubuf) not in whole:
                layer.U.mul_(c if s >= 0 else -c)
            if id(vbuf) not in whole:
                layer.V.mul_(c)
