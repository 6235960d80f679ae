"""Diffusion LoRAs trained per GPU-second: K at once (the zoo builder's `diffusion.train_group`) vs the plain way.

The plain way is what a user without lolscan writes (diffusers' DreamBooth-LoRA recipe): the base's
`UNet2DConditionModel` with one peft `LoraConfig` on the same modules (``unet.add_adapter``), torch AdamW,
the same noise-prediction MSE, one LoRA at a time, the adapter deleted before the next. Both paths train
the recipe's first adapters (`sample_specs`: the same images and captions) with fixed settings (rank,
alpha, lr, weight decay, steps, batch; constant lr), on the same base and device. Usage (GPU machine):

    python3 bench/diffusion_zoo_throughput.py recipes/inhouse-fashion-classes-inhouse-clip.toml \
        --base-path models/inhouse/pixel-32-fashion --clip-model models/inhouse/clip-fashion --label \
        --device cuda --k 32 64 --sequential 3 --steps 40 --json out.json --max-seconds 90

``--max-seconds`` (from the start of the process): a group that would not fit is cut to the steps that
fit (``steps`` in its entry), or skipped; the label pass is skipped when it would not fit.
"""
from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lolscan.zoo import diffusion as zd  # noqa: E402
from lolscan.zoo.clipscore import ClipScorer  # noqa: E402
from lolscan.zoo.diffusion_base import load_base  # noqa: E402
from lolscan.zoo.diffusion_recipe import load_recipe, sample_specs  # noqa: E402
from lolscan.zoo.images import open_source  # noqa: E402
from lolscan.zoo.multilora import eject, extract, find_targets  # noqa: E402
from lolscan.zoo.recipe import _alpha  # noqa: E402


def sync(dev) -> float:
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def run_sequential(base, recipe, source, specs, stop_at: float) -> tuple[list[float], float, int]:
    """The plain way, one LoRA per spec; each LoRA's seconds (data prep included, the first pays the
    warm-up), the mean |lora_B| of the last one before it was removed (0: it never trained) and its modules."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    unet, dev, times = base.unet, base.device, []
    sched = DDPMScheduler.from_config(base.scheduler.config)
    for i, s in enumerate(specs):
        if i > 1 and time.perf_counter() + times[-1] > stop_at:
            break
        t0 = sync(dev)
        z, ehs = zd.encoded_dataset(base, s, recipe, source)  # the same data preparation as the zoo's
        z = z.float()
        unet.add_adapter(LoraConfig(r=s.rank, lora_alpha=s.alpha, target_modules=recipe.target_modules,
                                    lora_dropout=0.0, use_dora=recipe.use_dora), adapter_name="plain")
        params = [p for p in unet.parameters() if p.requires_grad]  # the LoRA's: the base is frozen
        for p in params:  # a 16-bit base: the LoRA trains in float32 under autocast, as diffusers' DreamBooth-LoRA
            p.data = p.data.float()  # script does with --mixed_precision (its cast_training_params)
        opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
        unet.train()
        for _ in range(s.steps):
            idx = torch.randint(len(z), (s.batch_size,), device=dev)
            x0, noise = z[idx], torch.randn_like(z[idx])
            t = torch.randint(0, sched.config.num_train_timesteps, (s.batch_size,), device=dev)
            target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
            with torch.autocast(dev.type, dtype=base.dtype, enabled=base.dtype != torch.float32):
                pred = unet(sched.add_noise(x0, noise, t).to(base.dtype), t, encoder_hidden_states=ehs[idx]).sample
            torch.nn.functional.mse_loss(pred.float(), target.float()).backward()
            opt.step()
            opt.zero_grad()
        unet.eval()
        times.append(sync(dev) - t0)
        bs = [p.detach().abs().mean() for n, p in unet.named_parameters() if "lora_B" in n]
        b_abs, n_mod = float(torch.stack(bs).mean()), len(bs)
        unet.unload_lora()  # back to the plain base (its own nn.Linear modules) for the next LoRA
    return times, b_abs, n_mod


def label_estimate(base, recipe, k: int) -> float:
    """Seconds the label pass of k adapters should take: one guided sampling forward at its batch, timed."""
    lab = recipe.labels
    n = min(lab.batch, len(lab.prompts) * len(lab.seeds))
    rows, shape = k * n * (2 if lab.guidance_scale > 1 else 1), base.latent_shape()
    x, e = torch.randn(rows, *shape, device=base.device), base.encode_text([""]).expand(rows, -1, -1)
    with torch.no_grad():
        t0 = sync(base.device)
        base.unet(x.to(base.dtype), 500, encoder_hidden_states=e)
        t = sync(base.device) - t0
    return t * lab.steps * -(-len(lab.prompts) * len(lab.seeds) // lab.batch) * 1.2


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--base-path", default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--clip-model", default=None, help="the scorer for --label (default: the recipe's)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--k", type=int, nargs="*", default=[32, 64], help="group sizes to time")
    ap.add_argument("--sequential", type=int, default=3, help="plain LoRAs to train one after another")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--label", action="store_true", help="also time clip_labels on the first K's group")
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--dtype", default=None, help="the base's dtype for both paths (zoo builds: float16; default: "
                    "the recipe's); a 16-bit base trains the plain LoRA in float32 under autocast")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.sequential < 1 or a.steps < 2:
        ap.error("--sequential must be at least 1 and --steps at least 2")
    stop_at = T0 + a.max_seconds if a.max_seconds else float("inf")
    recipe = dataclasses.replace(load_recipe(a.recipe), lr_schedule="constant")
    opts = {**recipe.data.source_options, **({"data_root": a.data_root} if a.data_root else {})}
    source = open_source(recipe.data.source, opts)
    base = load_base(recipe.base, device=a.device, dtype=a.dtype, path_override=a.base_path)
    targets = find_targets(base.unet, recipe.target_modules)
    fixed = {"rank": a.rank, "alpha": _alpha(recipe.alpha, a.rank), "lr": a.lr, "steps": a.steps,
             "batch_size": a.batch, "weight_decay": a.weight_decay}
    n_specs = max([*a.k, a.sequential, 1])
    drawn = sample_specs(dataclasses.replace(recipe, n_loras=n_specs), source)  # each one's images and captions
    specs = [dataclasses.replace(s, **fixed) for s in drawn]
    w0 = {n: base.unet.get_submodule(n).weight.detach().clone() for n in targets}
    res = {"device": torch.cuda.get_device_name() if base.device.type == "cuda" else "cpu", "base": base.name,
           "recipe": recipe.name, "targets": len(targets), "resolution": base.resolution, "torch": torch.__version__,
           "dtype": str(base.dtype).removeprefix("torch."),
           **fixed, "load_s": time.perf_counter() - T0, "multi": []}

    def save():
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(res, indent=1))

    times, b_abs, n_mod = run_sequential(base, recipe, source, specs[:a.sequential], stop_at)
    s_seq = min(times[1:]) if len(times) > 1 else times[0]  # best after the warm-up
    res.update(sequential_times=times, sequential_s_per_lora=s_seq, sequential_adapter_steps_per_s=a.steps / s_seq,
               sequential_lora_b_abs=b_abs, sequential_lora_modules=n_mod)
    print(json.dumps({k: v for k, v in res.items() if k.startswith("sequential")}), flush=True)
    save()
    for k in a.k:
        t0 = sync(a.device)  # warm-up: two steps (kernels, allocator, data), then the timed run
        zd.train_group(base, targets, [dataclasses.replace(s, steps=2) for s in specs[:k]], recipe, source)
        eject(base.unet, targets)
        per_step = (sync(a.device) - t0) / 2  # an overestimate: the warm-up's data prep counted in
        steps = int(min(a.steps, (stop_at - time.perf_counter()) / per_step))
        if steps < 2:
            res["multi"].append({"k": k, "skipped": "out of time"})
            break
        t0 = sync(a.device)
        mods, losses = zd.train_group(base, targets, [dataclasses.replace(s, steps=steps) for s in specs[:k]],
                                      recipe, source)
        t = sync(a.device) - t0
        ranks = {n: a.rank for n in targets}
        b = [float(torch.stack([fb.abs().mean() for _, fb in extract(mods, slot, ranks).values()]).mean())
             for slot in range(k)]
        e = {"k": k, "steps": steps, "s_per_group": t, "adapter_steps_per_s": k * steps / t,
             "ratio_vs_plain": (k * steps / t) / (a.steps / s_seq), "lora_b_abs_min": min(b),
             "loss_first": float(losses[0].mean()), "loss_last": float(losses[-1].mean())}
        if a.label and not any("label_s" in m for m in res["multi"]):
            est = label_estimate(base, recipe, k)
            if time.perf_counter() + est < stop_at:
                clip = ClipScorer.load(a.clip_model or recipe.labels.clip_model, device=str(base.device))
                t0 = sync(a.device)
                lab = zd.clip_labels(base, clip, k, recipe)
                t = sync(a.device) - t0
                e.update(label_s=t, label_s_per_lora=t / k, label_estimate_s=est,
                         clip_score_mean=sum(r["clip_score"] for r in lab) / k)
            else:
                e["label_skipped"] = f"estimated {est:.1f}s, out of time"
        eject(base.unet, targets)
        res["multi"].append(e)
        print(json.dumps(e), flush=True)
        save()
    res["base_unchanged"] = all(type(m := base.unet.get_submodule(n)) is torch.nn.Linear and torch.equal(m.weight, w)
                                for n, w in w0.items())
    res["wall_s"] = time.perf_counter() - T0
    save()
    print(f"{res['device']}: plain peft {res['sequential_adapter_steps_per_s']:.1f} adapter-steps/s; "
          + "; ".join(f"K={m['k']} {m['adapter_steps_per_s']:.1f} ({m['ratio_vs_plain']:.1f}×)"
                      for m in res["multi"] if "s_per_group" in m) + f"; wall {res['wall_s']:.0f}s")
    return res


if __name__ == "__main__":
    main()
