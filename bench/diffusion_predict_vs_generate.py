"""Predict against generate-and-score for diffusion LoRAs of the in-house base (issue 18), in one run.

    python3 bench/diffusion_predict_vs_generate.py models/examples-fashion --model models/inhouse-fashion-classes \
        --base models/inhouse/pixel-32-fashion --clip models/inhouse/clip-fashion --recipe RECIPE --json OUT.json

Generate-and-score is what a user without lolscan does to learn how a LoRA behaves: put it into the
pipeline and sample the recipe's label prompts at its seeds (classifier-free guidance, DDIM), then score the
images with the CLIP-style scorer — exactly the zoo's label pass (`lolscan.zoo.diffusion.clip_labels`), with
the LoRA merged into the UNet (exact ΔW from lolscan's reader). Predict is `lolscan.checkpoint` on the same
file read from disk. Both on the same device, each adapter timed alone (best of ``--repeats``), after one
warm-up of each; the base and scorer loads are reported apart, not in either figure.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lolscan.checkpoint import load_checkpoint  # noqa: E402
from lolscan.formats import load_path  # noqa: E402
from lolscan.zoo.clipscore import ClipScorer  # noqa: E402
from lolscan.zoo.diffusion import clip_labels, merged  # noqa: E402
from lolscan.zoo.diffusion_recipe import load_recipe  # noqa: E402
from lolscan.zoo.pixel_base import load_pixel  # noqa: E402


def files_in(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.safetensors")) if folder.is_dir() else [folder]


@torch.no_grad()
def generate_and_score(base, clip, recipe, path: Path) -> float:
    with merged(base.unet, load_path(path)):
        return clip_labels(base, clip, 1, recipe)[0]["clip_score"]


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a LoRA file or a folder of them")
    ap.add_argument("--model", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--clip", required=True)
    ap.add_argument("--recipe", default="recipes/inhouse-fashion-classes-inhouse-clip.toml",
                    help="the label prompts, seeds, steps and guidance")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    recipe = load_recipe(a.recipe)
    files = files_in(Path(a.source))
    t0 = time.perf_counter()
    base = load_pixel({}, a.device, "float32", a.base)
    clip = ClipScorer.load(a.clip, device=a.device)
    t_load_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    ck = load_checkpoint(a.model, device=a.device)
    t_load_ck = time.perf_counter() - t0
    generate_and_score(base, clip, recipe, files[0])  # warm-ups
    ck.predict([load_path(files[0])])
    rows = []
    for f in files:
        g, score = best_of(lambda f=f: generate_and_score(base, clip, recipe, f), a.repeats)
        p, _ = best_of(lambda f=f: ck.predict([load_path(f)]), a.repeats)
        rows.append({"file": str(f), "generate_and_score_s": g, "predict_s": p, "ratio": g / p, "clip_score": score})
        print(f"{f}: generate-and-score {g:.2f} s (CLIP score {score:.2f}), predict {p * 1e3:.1f} ms, {g / p:.0f}×")
    gs, ps = [r["generate_and_score_s"] for r in rows], [r["predict_s"] for r in rows]
    res = {"device": str(a.device), "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None,
           "machine": platform.node(), "threads": torch.get_num_threads(), "model": a.model, "recipe": a.recipe,
           "images_per_lora": len(recipe.labels.prompts) * len(recipe.labels.seeds), "steps": recipe.labels.steps,
           "guidance": recipe.labels.guidance_scale, "load_base_and_scorer_s": t_load_gen,
           "load_checkpoint_s": t_load_ck, "rows": rows,
           "median_generate_and_score_s": sorted(gs)[len(gs) // 2], "median_predict_s": sorted(ps)[len(ps) // 2],
           "median_ratio": sorted(r["ratio"] for r in rows)[len(rows) // 2]}
    print(f"median: generate-and-score {res['median_generate_and_score_s']:.2f} s, predict "
          f"{res['median_predict_s'] * 1e3:.1f} ms: {res['median_ratio']:.0f}× ({len(rows)} LoRAs, {a.device}, "
          f"{res['threads']} threads)")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
