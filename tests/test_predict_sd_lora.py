"""A Stable Diffusion LoRA against the bundled (language-model) checkpoints: exit 4, one line saying what it
is (the family `formats/family.py` detects) and how to build a checkpoint that fits it (with --model naming
one: what differs, and that in a hint line).

Truth: the real SD-1.5 files of ../shared/fixtures/real/ (its README says which they are and what they
adapt), run through a separate `lolscan predict` process against the repository's `models/`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT.parent / "shared" / "fixtures" / "real"
# file -> what its README says the LoRA adapts
SD15 = {"catundchat_sd15_pytorch_lora_weights.safetensors": ("UNet", 128),
        "cloneofsimo_analog_svd_rank4.safetensors": ("UNet + text encoder", 192),
        "cloneofsimo_lora_disney.safetensors": ("UNet + text encoder", 192)}
BUILD = ("`lolscan zoo build recipes/sd15-shapes-attn.toml ZOO --device cuda`",
         "`lolscan train ZOO/manifest.jsonl --target clip_score --out my-sd-model`",
         "`lolscan predict FILE --model my-sd-model`")


def predict(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), LOLSCAN_DATA_DIR=str(tmp_path / "data"), COLUMNS="400")
    env.pop("LOLSCAN_MODELS_DIR", None)  # the checkpoints bundled in models/
    return subprocess.run([sys.executable, "-m", "lolscan", "predict", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def error_and_hint(stderr: str) -> tuple[str, str]:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    err = next(ln for ln in lines if ln.startswith("error:"))
    hint = next(ln for ln in lines if ln.strip().startswith("hint:"))
    return err, hint


def only_error(stderr: str) -> str:
    """Without --model, the one line an adapter no bundled checkpoint fits gets (no hint line after it)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and not any(ln.strip().startswith("hint:") for ln in lines), stderr
    return errors[0]


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/fixtures/real is absent")
@pytest.mark.parametrize("name", sorted(SD15))
def test_real_sd15_lora_gets_exit_4_and_how_to_build_a_checkpoint(name, tmp_path):
    parts, n = SD15[name]
    p = predict(tmp_path, str(REAL / name))
    assert p.returncode == 4, p.stderr
    assert "Traceback" not in p.stderr
    err = only_error(p.stderr)
    assert name in err and "no bundled checkpoint fits it" in err
    assert f"it is a Stable Diffusion 1.x {parts} LoRA ({n} modules, e.g. " in err
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in err  # what the bundled checkpoints are for
    assert "modules unknown" not in err  # no list of UNet module names
    pos = [err.index(cmd) for cmd in BUILD]
    assert pos == sorted(pos)  # zoo build, then train, then predict
    # the recipe the message names ships with lolscan
    assert (ROOT / "recipes" / "sd15-shapes-attn.toml").is_file()


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/fixtures/real is absent")
def test_real_sd15_lora_against_the_other_bundled_checkpoint(tmp_path):
    models = sorted(p.name for p in (ROOT / "models").iterdir() if (p / "card.json").is_file())
    other = next(m for m in models if m != "smollm2-val-loss")
    p = predict(tmp_path, str(REAL / "catundchat_sd15_pytorch_lora_weights.safetensors"), "--model", other)
    assert p.returncode == 4
    err, hint = error_and_hint(p.stderr)
    assert f"does not fit checkpoint '{other}'" in err and "Stable Diffusion 1.x UNet LoRA" in err
    assert "no bundled checkpoint fits a Stable Diffusion 1.x (sd1) LoRA" in hint


def synthetic_lora(path: Path, shapes: dict[str, tuple[int, int]]) -> Path:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    t = {}
    for name, (out_f, in_f) in shapes.items():
        t[f"{name}.lora_A.weight"] = rng.standard_normal((4, in_f)).astype(np.float32)
        t[f"{name}.lora_B.weight"] = rng.standard_normal((out_f, 4)).astype(np.float32)
    save_file(t, str(path))
    return path


def test_unet_lora_of_no_known_family_is_a_diffusion_lora(tmp_path):
    """A UNet LoRA of no known family (cross-attention 512, which neither SD nor the in-house base has):
    still said plainly, with both shipped diffusion recipes named."""
    f = synthetic_lora(tmp_path / "unet_lora.safetensors", {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (32, 512),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (32, 32)})
    p = predict(tmp_path, str(f))
    assert p.returncode == 4, p.stderr
    err = only_error(p.stderr)
    assert "no bundled checkpoint fits it: it is a diffusion UNet LoRA (2 modules" in err
    for recipe in ("recipes/sd15-shapes-attn.toml", "recipes/inhouse-fashion-classes.toml"):
        assert recipe in err and (ROOT / recipe).is_file()
    p = predict(tmp_path, str(f), "--model", "smollm2-val-loss")  # a checkpoint named: what differs, and a hint
    assert p.returncode == 4, p.stderr
    err, hint = error_and_hint(p.stderr)
    assert "looks like unet (cross-attention 512)" in err and "it is a diffusion UNet LoRA (2 modules)" in err
    assert "no bundled checkpoint fits a diffusion UNet LoRA" in hint
    for recipe in ("recipes/sd15-shapes-attn.toml", "recipes/inhouse-fashion-classes.toml"):
        assert recipe in hint


def test_a_lora_of_the_in_house_base_gets_both_diffusion_checkpoints(tmp_path):
    """A LoRA on two of the in-house base's attention projections (cross-attention 384): the bundled
    in-house checkpoints score it (classes and dataset size, each from its own checkpoint), flagged as
    unlike their training LoRAs, which adapt all 56 projections."""
    f = synthetic_lora(tmp_path / "pixel_lora.safetensors", {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (32, 384),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (32, 32)})
    p = predict(tmp_path, str(f), "-f", "json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    (row,) = report["results"]
    assert row["models"] == {"classes": "inhouse-fashion-classes", "dataset_size": "inhouse-fashion-dataset-size"}
    assert row["domain"]["in_domain"] is False


def test_sdxl_lora_says_sdxl(tmp_path):
    """A (synthetic) SDXL LoRA: diffusers keys of the UNet's cross-attention (2048-wide text states) and of
    the second text encoder."""
    f = synthetic_lora(tmp_path / "sdxl_lora.safetensors", {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": (640, 2048),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q": (640, 640),
        "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj": (1280, 1280)})
    p = predict(tmp_path, str(f))
    assert p.returncode == 4, p.stderr
    err = only_error(p.stderr)
    assert "no bundled checkpoint fits it: it is an SDXL UNet + text encoder LoRA (3 modules" in err and "lolscan train" in err


def test_hint_names_an_installed_checkpoint_for_that_family(monkeypatch):
    import lolscan.cli.models_cmd as mc

    monkeypatch.setattr(mc, "list_checkpoints", lambda: [
        {"name": "smollm2-val-loss", "base_model": "llama-style LLM, hidden 576 (HuggingFaceTB/SmolLM2-135M-Instruct)"},
        {"name": "my-sd-model", "base_model": "sd1"}])
    err = "does not fit checkpoint 'smollm2-val-loss' (base model x; the adapter looks like sd1): it is …"
    assert mc.fit_hint(err, "smollm2-val-loss", {}) == "a LoRA of sd1; checkpoints for that base model: my-sd-model (--model NAME)"
    err2 = err.replace("looks like sd1", "looks like sd2")
    assert mc.fit_hint(err2, "smollm2-val-loss", {}).startswith("no bundled checkpoint fits a Stable Diffusion 2.x (sd2) LoRA")
