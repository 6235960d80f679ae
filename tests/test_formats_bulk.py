"""The bulk read of plain up/down pairs (formats.plain, tensorfile.float32_copies) against the per-module path."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

import lolscan
from lolscan.formats.common import lora_layer, scalar, scalar_of
from lolscan.formats.tensorfile import float32_copies, read_tensor_file

MODULES = {  # kohya module -> (up shape, down shape)
    "lora_unet_down_blocks_0_attentions_0_proj_in": ((6, 3), (3, 5)),
    "lora_unet_down_blocks_0_resnets_0_conv1": ((7, 2, 1, 1), (2, 4, 3, 3)),
    "lora_unet_down_blocks_0_resnets_0_conv2": ((7, 4, 1, 1), (4, 4, 1, 1)),
    "lora_unet_mid_block_attentions_0_proj_out": ((5, 1), (1, 9)),
}


def _write(path, dtype, alphas, gen):
    tensors = {}
    for (module, (up, down)), alpha in zip(MODULES.items(), alphas):
        tensors[f"{module}.lora_up.weight"] = torch.randn(up, generator=gen).to(dtype)
        tensors[f"{module}.lora_down.weight"] = torch.randn(down, generator=gen).to(dtype)
        if alpha is not None:
            tensors[f"{module}.alpha"] = torch.tensor(alpha, dtype=dtype)
    save_file(tensors, path)
    return tensors


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("alphas", [(None,) * 4, (2.0, 2.0, 2.0, 2.0), (3.0, -1.5, 0.0, 7.0), (-4.0,) * 4])
def test_bulk_layers_are_bit_for_bit_the_per_module_ones(tmp_path, dtype, alphas):
    gen = torch.Generator().manual_seed(0)
    tensors = _write(tmp_path / "a.safetensors", dtype, alphas, gen)
    adapter = lolscan.load(str(tmp_path / "a.safetensors"))
    assert len(adapter) == len(MODULES)
    for (module, (up, down)), alpha, layer in zip(MODULES.items(), alphas, adapter.layers.values()):
        roles = {"up": f"{module}.lora_up.weight", "down": f"{module}.lora_down.weight"}
        if alpha is not None:
            roles["alpha"] = f"{module}.alpha"
        s = 1.0 if not alpha else float(tensors[roles["alpha"]]) / down[0]
        ref = lora_layer(tensors[roles["up"]], tensors[roles["down"]], s, name=module, path="x", keys=tuple(sorted(roles.values())))
        assert layer.U.dtype == layer.V.dtype == torch.float32
        assert torch.equal(_bits(layer.U), _bits(ref.U)) and torch.equal(_bits(layer.V), _bits(ref.V))
        assert (layer.shape, layer.kind, layer.scale, layer.source_keys) == (ref.shape, ref.kind, ref.scale, ref.source_keys)


def test_nan_and_inf_are_found_per_module_and_huge_finite_values_are_not(tmp_path):
    ok = {"lora_unet_b.lora_down.weight": torch.randn(2, 5), "lora_unet_b.lora_up.weight": torch.randn(3, 2)}
    bad = torch.randn(2, 4)
    bad[1, 2] = float("inf")
    save_file({"lora_unet_a.lora_down.weight": bad, "lora_unet_a.lora_up.weight": torch.randn(3, 2), **ok}, tmp_path / "inf.safetensors")
    assert lolscan.load(str(tmp_path / "inf.safetensors")).warnings == ["1 module(s) hold NaN/Inf values, e.g. unet.a"]
    # factors near float32's limit: their sum overflows, each value is finite
    save_file({"lora_unet_a.lora_down.weight": torch.full((2, 4), 3e38), "lora_unet_a.lora_up.weight": torch.full((3, 2), 3e38), **ok},
              tmp_path / "huge.safetensors")
    assert lolscan.load(str(tmp_path / "huge.safetensors")).warnings == []
    # a scale that overflows finite factors is caught after folding
    save_file({"lora_unet_a.lora_down.weight": torch.full((2, 4), 3e38), "lora_unet_a.lora_up.weight": torch.ones(3, 2),
               "lora_unet_a.alpha": torch.tensor(200.0), **ok}, tmp_path / "scaled.safetensors")
    assert "1 module(s) hold NaN/Inf" in lolscan.load(str(tmp_path / "scaled.safetensors")).warnings[0]


def test_float32_copies_share_a_buffer_per_run_and_belong_to_the_caller(tmp_path):
    t = {"a": torch.randn(3, 4).half(), "b": torch.randn(5).half(), "c": torch.randn(2, 2), "d": torch.ones(3, dtype=torch.int32), "e": torch.randn(4).half()}
    save_file(t, tmp_path / "m.safetensors")
    tf = read_tensor_file(tmp_path / "m.safetensors")
    copies = float32_copies(tf, ["a", "b", "c", "d", "e"])
    assert set(copies) == {"a", "b", "c", "e"}  # integer tensors are never converted
    for key, (buf, off) in copies.items():
        n = t[key].numel()
        assert torch.equal(buf[off : off + n], t[key].reshape(-1).float())
    runs = {key: id(buf) for key, (buf, _) in copies.items()}
    by_offset = sorted(copies, key=lambda k: tf.layout[k][2])
    for k0, k1 in zip(by_offset, by_offset[1:]):  # one buffer exactly when back to back with one dtype
        together = tf.layout[k0][0] == tf.layout[k1][0] and tf.layout[k0][3] == tf.layout[k1][2]
        assert (runs[k0] == runs[k1]) == together
    buf, off = copies["c"]
    buf.mul_(2)  # float32 source: still a copy, the file's tensor is untouched
    assert torch.equal(tf.tensors["c"], t["c"])


def test_tensors_are_built_on_access_in_header_order(tmp_path):
    t = {"z": torch.randn(2, 3), "a": torch.randn(4).half(), "m": torch.tensor(1.5)}
    save_file(t, tmp_path / "o.safetensors")
    tf = read_tensor_file(tmp_path / "o.safetensors")
    assert list(tf.tensors) == list(tf.layout) and len(tf.tensors) == 3 and "a" in tf.tensors and "q" not in tf.tensors
    assert {k: tf.shape(k) for k in tf.tensors} == {k: tuple(v.shape) for k, v in t.items()}
    for key, value in t.items():
        assert torch.equal(tf.tensors[key], value) and tf.tensors[key] is tf.tensors[key]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float8_e4m3fn])
def test_scalars_read_from_bytes_equal_the_tensor_values(tmp_path, dtype):
    values = {f"s{i}": torch.tensor(v, dtype=dtype) for i, v in enumerate([0.1, -3.7, 1e-3, 448.0, math.inf, 2.5])}
    values["shaped"] = torch.tensor([[0.3]], dtype=dtype)
    save_file(values, tmp_path / "s.safetensors")
    tf = read_tensor_file(tmp_path / "s.safetensors")
    for key, t in values.items():
        assert scalar_of(tf, key) == scalar(t, key, "x") == float(t.double().reshape(-1)[0])
