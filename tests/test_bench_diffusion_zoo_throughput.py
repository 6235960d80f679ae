"""bench/diffusion_zoo_throughput.py end to end on CPU: the shipped Fashion-MNIST recipe on a tiny random
pixel base (16 px, 32-d BERT), random IDX images, a tiny CLIP. Both paths must train (their LoRA B factors,
zero at init, move), leave the base's weights as they were, and report adapter-steps/s; the ratio is not asserted.
With a 16-bit base (``--dtype``) the plain LoRA trains in float32 under autocast."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffusion_toy import TINY_PIXEL_UNET, save_tiny_bert, save_tiny_clip, write_tiny_fashion_mnist  # noqa: E402
from helpers import load_script  # noqa: E402

from lolscan.zoo.pixel_base import create_pixel_base  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dtype", [None, "bfloat16"])  # a 16-bit base: both paths as a zoo build runs them
def test_both_paths_train_and_report(tmp_path, dtype):
    save_tiny_bert(tmp_path / "bert")
    create_pixel_base(tmp_path / "base", str(tmp_path / "bert"), unet=TINY_PIXEL_UNET, copy_text_encoder=True)
    write_tiny_fashion_mnist(tmp_path / "fmnist")
    save_tiny_clip(tmp_path / "clip")
    recipe = tmp_path / "recipe.toml"  # the shipped recipe at 16 px, with a short label pass
    recipe.write_text(f'extends = "{REPO / "recipes" / "inhouse-fashion-classes.toml"}"\n[base]\nresolution = 16\n'
                      '[labels]\nprompts = ["a photo of a Bag", "a photo of a Trouser"]\n'
                      'seeds = [0]\nsteps = 2\nbatch = 2\n')
    out = tmp_path / "out.json"
    res = load_script("bench/diffusion_zoo_throughput.py").main(
        [str(recipe), "--base-path", str(tmp_path / "base"), "--data-root", str(tmp_path / "fmnist"),
         "--clip-model", str(tmp_path / "clip"), "--label", "--device", "cpu", "--k", "3", "--sequential", "2",
         "--steps", "3", "--batch", "2", "--json", str(out), "--max-seconds", "300", *(["--dtype", dtype] if dtype else [])])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["targets"] == 32 and res["base_unchanged"] and res["dtype"] == (dtype or "float32")
    assert len(res["sequential_times"]) == 2 and res["sequential_adapter_steps_per_s"] > 0
    assert res["sequential_lora_modules"] == 32 and res["sequential_lora_b_abs"] > 0  # same modules; it trained
    (m,) = res["multi"]
    assert m["k"] == 3 and m["steps"] == 3 and m["adapter_steps_per_s"] > 0 and m["ratio_vs_plain"] > 0
    assert m["lora_b_abs_min"] > 0  # every one of the K trained
    assert m["label_s_per_lora"] > 0 and 0 <= m["clip_score_mean"] <= 100
