"""LayerSpec: union of modules, JSON round trip, and the fit check that refuses with exit code 4."""
from __future__ import annotations

import json

import pytest
import torch

from lolscan import Adapter, Layer
from lolscan.errors import EXIT_INCOMPATIBLE, IncompatibleAdapter
from lolscan.nets import LayerShape, LayerSpec


def adapter(shapes: dict[str, tuple[int, int]], r: int = 2, source: str = "") -> Adapter:
    layers = {k: Layer(torch.randn(n, r), torch.randn(m, r), shape=(n, m)) for k, (n, m) in shapes.items()}
    return Adapter(layers=layers, format="test", source=source)


def test_from_adapters_is_first_seen_union() -> None:
    a = adapter({"x.q": (8, 4), "x.k": (6, 4)})
    b = adapter({"x.v": (8, 4), "x.q": (8, 4)})
    spec = LayerSpec.from_adapters([a, b])
    assert spec.names == ("x.q", "x.k", "x.v")
    assert [(s.n, s.m) for s in spec] == [(8, 4), (6, 4), (8, 4)]
    # identical shapes share a group; groups in first-seen order, indices in spec order
    assert [(g.n, g.m, g.indices) for g in spec.groups] == [(8, 4, (0, 2)), (6, 4, (1,))]
    order = [i for g in spec.groups for i in g.indices]
    assert [order[j] for j in spec.group_inverse] == [0, 1, 2]


def test_conflicting_shapes_are_an_error() -> None:
    a = adapter({"x.q": (8, 4)})
    b = adapter({"x.q": (4, 8)}, source="b.safetensors")
    with pytest.raises(ValueError, match=r"x\.q.*4×8.*b\.safetensors"):
        LayerSpec.from_adapters([a, b])
    with pytest.raises(ValueError, match="duplicate"):
        LayerSpec([LayerShape("a", 1, 2), LayerShape("a", 1, 2)])
    with pytest.raises(ValueError):
        LayerShape("a", 0, 2)


def test_json_round_trip_and_validation() -> None:
    spec = LayerSpec([LayerShape("b", 3, 5), LayerShape("a", 7, 2)])
    text = json.dumps(spec.to_json())
    again = LayerSpec.from_json(json.loads(text))
    assert again == spec and again.names == ("b", "a")
    for bad in ({}, {"layers": [{"name": "a", "n": 1}]}, {"layers": [{"name": "a", "n": "3", "m": 2}]}, [1, 2]):
        with pytest.raises(ValueError):
            LayerSpec.from_json(bad)


def test_differences_and_missing_modules_are_fine() -> None:
    spec = LayerSpec([LayerShape("a", 8, 4), LayerShape("b", 8, 4), LayerShape("c", 2, 2)])
    assert spec.differences(adapter({"a": (8, 4)})) == []  # b and c untouched: ΔW = 0, fine
    diffs = spec.differences(adapter({"a": (4, 8), "b": (8, 4), "zz": (1, 1)}))
    assert diffs == ["a is 4×8 in the adapter, 8×4 in the checkpoint", "zz is unknown to the checkpoint"]


def test_require_fits_names_the_module_in_one_line() -> None:
    spec = LayerSpec([LayerShape(f"unet.m{i}.to_k", 640, 768) for i in range(4)])
    bad = adapter({"unet.m0.to_k": (320, 768), "unet.m1.to_k": (640, 768), "unet.extra": (3, 3)}, source="my.safetensors")
    with pytest.raises(IncompatibleAdapter) as err:
        spec.require_fits(bad)
    msg = str(err.value)
    assert err.value.exit_code == EXIT_INCOMPATIBLE
    assert "\n" not in msg and msg.startswith("my.safetensors: ")
    assert "1 of 3 modules do not fit: unet.m0.to_k is 320×768 in the adapter, 640×768 in the checkpoint" in msg
    assert "1 module unknown to the checkpoint (unet.extra)" in msg
    spec.require_fits(adapter({"unet.m3.to_k": (640, 768)}))  # fits: no exception


def test_no_module_in_common_is_refused() -> None:
    spec = LayerSpec([LayerShape("a", 4, 4)])
    for other in (adapter({"b": (4, 4)}), Adapter(layers={}, format="test")):
        assert spec.differences(other)
        with pytest.raises(IncompatibleAdapter):
            spec.require_fits(other)
