"""Every real fixture loads with the expected structure, and U Vᵀ equals ΔW recomputed from the raw tensors."""
from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

import lolscan

from helpers import REAL
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/fixtures/real not present")


def _probe(layer, up: torch.Tensor, down: torch.Tensor, scale: float = 1.0) -> None:
    """U Vᵀ equals scale·up·down, checked on random probes (dense ΔW of 1280×10240 layers is slow)."""
    x = torch.randn(down.shape[1], 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = layer.U.double() @ (layer.V.double().T @ x)
    want = scale * (up.double() @ (down.double() @ x))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


def _close(adapter, expected: dict[str, torch.Tensor]):
    assert set(adapter) == set(expected)
    for name, delta in expected.items():
        torch.testing.assert_close(adapter[name].delta().double(), delta, atol=1e-6, rtol=1e-4)


def test_diffusers_attn_processor_file():
    path = REAL / "catundchat_sd15_pytorch_lora_weights.safetensors"
    raw = load_file(path)
    adapter = lolscan.load(str(path))
    assert adapter.format == "diffusers" and len(adapter) == 128 and set(adapter.ranks) == {4}
    expected = {}
    for key in raw:
        m = re.match(r"(.*)\.processor\.(to_[qkv]|to_out)_lora\.down\.weight$", key)
        if m:
            up = raw[key.replace(".down.", ".up.")].double()
            module = f"unet.{m[1]}.{m[2]}" + (".0" if m[2] == "to_out" else "")
            expected[module] = up @ raw[key].double()  # no alphas: scale 1
    _close(adapter, expected)


def test_diffusers_lora_folder_reads_like_its_file(tmp_path):
    """A folder as diffusers' save_lora_weights leaves it (pytorch_lora_weights.safetensors, no
    adapter_config.json), which pipe.load_lora_weights(folder) reads: lolscan.load(folder) gives the file's
    exact updates; a folder with neither file is refused, naming both."""
    import shutil

    from lolscan.errors import InputError

    path = REAL / "catundchat_sd15_pytorch_lora_weights.safetensors"
    (tmp_path / "lora").mkdir()
    shutil.copy(path, tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    folder, file = lolscan.load(str(tmp_path / "lora")), lolscan.load(str(path))
    assert folder.format == "diffusers" and list(folder) == list(file)
    _close(folder, {n: file[n].delta().double() for n in file})
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="adapter_config.json or pytorch_lora_weights.safetensors"):
        lolscan.load(str(tmp_path / "empty"))


@pytest.mark.parametrize("name,rank,extra", [("cloneofsimo_analog_svd_rank4.safetensors", 4, 0), ("cloneofsimo_lora_disney.safetensors", 1, 2)])
def test_cloneofsimo_index_files(name, rank, extra):
    path = REAL / name
    raw = load_file(path)
    adapter = lolscan.load(str(path))
    assert adapter.format == "cloneofsimo" and len(adapter) == 192 and set(adapter.ranks) == {rank}
    assert len(adapter.extra_tensors) == extra  # textual-inversion tokens are reported, not LoRA
    # Each layer's ΔW is exactly up @ down of one index (scale 1); the name table must place
    # every index on a module of the right shape: SD1.5 channels 320/640/1280, CLIP-L 768.
    factors = {}
    for key in raw:
        m = re.match(r"(unet|text_encoder):(\d+):down$", key)
        if m:
            factors[(m[1], int(m[2]))] = (raw[key.replace(":down", ":up")], raw[key])
    layers = list(adapter.layers.items())
    unet = [l for l in layers if l[0].startswith("unet.")]
    te = [l for l in layers if l[0].startswith("text_encoder.")]
    assert len(unet) == 144 and len(te) == 48
    for i, (module, layer) in enumerate(unet):
        _probe(layer, *factors[("unet", i)])
        width = {"down_blocks.0": 320, "down_blocks.1": 640, "down_blocks.2": 1280, "mid_block": 1280,
                 "up_blocks.1": 1280, "up_blocks.2": 640, "up_blocks.3": 320}[re.match(r"unet\.((?:down|up)_blocks\.\d|mid_block)", module)[1]]
        assert layer.n == (8 * width if module.endswith("ff.net.0.proj") else width)
        assert layer.m == (768 if re.search(r"attn2\.to_[kv]$", module) else width)
    for i, (module, layer) in enumerate(te):
        _probe(layer, *factors[("text_encoder", i)])
        assert (layer.n, layer.m) == (768, 768)
    assert adapter.ranks and adapter.dtype == ("F16" if rank == 4 else "F32")


def test_peft_gradience_folder():
    folder = REAL / "gradience_tiny_lora"
    config = json.loads((folder / "adapter_config.json").read_text())
    raw = load_file(folder / "adapter_model.safetensors")
    adapter = lolscan.load(str(folder))
    assert adapter.format == "peft" and len(adapter) == 12 and set(adapter.ranks) == {config["r"]}
    s = config["lora_alpha"] / config["r"]
    expected = {}
    for key in raw:
        if key.endswith(".lora_A.weight"):
            module = key[len("base_model.model."): -len(".lora_A.weight")]
            expected[module] = s * raw[key.replace("lora_A", "lora_B")].double() @ raw[key].double()
    _close(adapter, expected)
    assert adapter["transformer.h.0.attn.c_attn"].shape == (2304, 768)
