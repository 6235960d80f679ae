"""The layer spec a metanetwork is built for: which modules, in which order, of which shape.

A checkpoint stores its `LayerSpec` (``to_json``); an adapter is scored by a checkpoint only if
every module it adapts is in the spec with the same ``n × m``. A spec module that the adapter
does not touch is fine: its update is ΔW = 0.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

from ..adapter import Adapter
from ..errors import IncompatibleAdapter

_EXAMPLES = 3  # how many names a one-line message quotes


@dataclass(frozen=True)
class LayerShape:
    """One module of the spec: ΔW is ``n × m`` (PyTorch ``[out, in]``, convs flattened)."""

    name: str
    n: int
    m: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"layer name must be a non-empty string, got {self.name!r}")
        for dim in (self.n, self.m):
            if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
                raise ValueError(f"layer {self.name!r}: dimensions must be positive ints, got {self.n!r}×{self.m!r}")


@dataclass(frozen=True)
class ShapeGroup:
    """Spec layers that share one ``(n, m)``; processed together with batched matmuls."""

    n: int
    m: int
    indices: tuple[int, ...]  # positions in the spec, ascending


class LayerSpec(Sequence[LayerShape]):
    """An ordered, immutable list of `LayerShape` with unique names."""

    def __init__(self, layers: Iterable[LayerShape]):
        self._layers: tuple[LayerShape, ...] = tuple(layers)
        self._index: dict[str, int] = {}
        for i, layer in enumerate(self._layers):
            if not isinstance(layer, LayerShape):
                raise TypeError(f"LayerSpec holds LayerShape, got {type(layer).__name__}")
            if layer.name in self._index:
                raise ValueError(f"duplicate module {layer.name!r} in layer spec")
            self._index[layer.name] = i
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, layer in enumerate(self._layers):
            by_shape.setdefault((layer.n, layer.m), []).append(i)
        self._groups = tuple(ShapeGroup(n, m, tuple(ix)) for (n, m), ix in by_shape.items())
        # Concatenating per-group results gives layers in "group order"; this permutation puts
        # them back in spec order: spec_tensor = group_tensor[:, group_inverse].
        order = [i for g in self._groups for i in g.indices]
        inverse = [0] * len(order)
        for pos, i in enumerate(order):
            inverse[i] = pos
        self._group_inverse = tuple(inverse)

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_adapters(cls, adapters: Iterable[Adapter]) -> LayerSpec:
        """Union of the adapters' modules in first-seen order; a name seen with two shapes is an error."""
        seen: dict[str, LayerShape] = {}
        for adapter in adapters:
            for name, layer in adapter.layers.items():
                shape = LayerShape(name, layer.n, layer.m)
                prior = seen.get(name)
                if prior is None:
                    seen[name] = shape
                elif (prior.n, prior.m) != (shape.n, shape.m):
                    where = f" in {adapter.source}" if adapter.source else ""
                    raise ValueError(
                        f"module {name!r} is {shape.n}×{shape.m}{where} but {prior.n}×{prior.m} in an earlier adapter"
                    )
        if not seen:
            raise ValueError("cannot build a layer spec from adapters with no modules")
        return cls(seen.values())

    def to_json(self) -> dict[str, Any]:
        return {"layers": [{"name": s.name, "n": s.n, "m": s.m} for s in self._layers]}

    @classmethod
    def from_json(cls, data: Any) -> LayerSpec:
        if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
            raise ValueError("layer spec must be an object with a 'layers' list")
        layers = []
        for item in data["layers"]:
            if not isinstance(item, dict) or set(item) != {"name", "n", "m"}:
                raise ValueError(f"layer spec entry must have exactly name, n, m: {item!r}")
            layers.append(LayerShape(item["name"], item["n"], item["m"]))
        return cls(layers)

    # --- sequence protocol --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._layers)

    @overload
    def __getitem__(self, i: int) -> LayerShape: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[LayerShape]: ...
    def __getitem__(self, i):  # type: ignore[override]
        return self._layers[i]

    def __iter__(self) -> Iterator[LayerShape]:
        return iter(self._layers)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerSpec) and self._layers == other._layers

    def __hash__(self) -> int:
        return hash(self._layers)

    def __repr__(self) -> str:
        return f"LayerSpec({len(self)} layers, {len(self._groups)} shapes)"

    # --- lookups ------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._layers)

    def index(self, name: str) -> int:  # type: ignore[override]
        return self._index[name]

    def get(self, name: str) -> LayerShape | None:
        i = self._index.get(name)
        return None if i is None else self._layers[i]

    @property
    def groups(self) -> tuple[ShapeGroup, ...]:
        """Layers grouped by identical ``(n, m)``, groups in first-seen order."""
        return self._groups

    @property
    def group_inverse(self) -> tuple[int, ...]:
        """Index that reorders group-concatenated layers into spec order."""
        return self._group_inverse

    @property
    def total_entries(self) -> int:
        """Σ n·m: the size of all ΔW together."""
        return sum(s.n * s.m for s in self._layers)

    # --- compatibility ------------------------------------------------------------------
    def _compare(self, adapter: Adapter) -> tuple[list[tuple[str, tuple[int, int], tuple[int, int]]], list[str], int]:
        wrong: list[tuple[str, tuple[int, int], tuple[int, int]]] = []
        unknown: list[str] = []
        common = 0
        for name, layer in adapter.layers.items():
            spec = self.get(name)
            if spec is None:
                unknown.append(name)
            elif (layer.n, layer.m) != (spec.n, spec.m):
                wrong.append((name, (layer.n, layer.m), (spec.n, spec.m)))
            else:
                common += 1
        return wrong, unknown, common

    def differences(self, adapter: Adapter) -> list[str]:
        """Human-readable reasons the adapter does not fit; empty when it fits."""
        wrong, unknown, common = self._compare(adapter)
        out = [f"{name} is {a[0]}×{a[1]} in the adapter, {s[0]}×{s[1]} in the checkpoint" for name, a, s in wrong]
        out += [f"{name} is unknown to the checkpoint" for name in unknown]
        if len(adapter) == 0:
            out.append("the adapter has no modules")
        elif common == 0:
            out.append("the adapter has no module in common with the checkpoint")
        return out

    def fits(self, adapter: Adapter) -> bool:
        return not self.differences(adapter)

    def require_fits(self, adapter: Adapter) -> None:
        """Raise `IncompatibleAdapter` (exit code 4) with a one-line summary of what differs."""
        wrong, unknown, common = self._compare(adapter)
        total = len(adapter)
        parts: list[str] = []
        if wrong:
            name, a, s = wrong[0]
            more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
            parts.append(
                f"{len(wrong)} of {total} modules do not fit: {name} is {a[0]}×{a[1]} in the adapter, "
                f"{s[0]}×{s[1]} in the checkpoint{more}"
            )
        if unknown:
            noun = "module" if len(unknown) == 1 else "modules"
            examples = ", ".join(unknown[:_EXAMPLES]) + (", ..." if len(unknown) > _EXAMPLES else "")
            label = "" if len(unknown) == 1 else "e.g. "
            parts.append(f"{len(unknown)} {noun} unknown to the checkpoint ({label}{examples})")
        if total == 0:
            parts.append("the adapter has no modules")
        elif common == 0 and not parts:
            parts.append("the adapter has no module in common with the checkpoint")
        elif common == 0:
            parts.append("no module in common with the checkpoint")
        if parts:
            raise IncompatibleAdapter("; ".join(parts), path=adapter.source or None)
