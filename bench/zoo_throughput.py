"""LoRAs trained per GPU-minute: K adapters at once (lolscan.zoo.multilora) vs a plain sequential peft loop.

Same base model, same data, same steps and batch size per LoRA, same GPU. Prints a table and writes
JSON. Usage (GPU machine):

    python3 bench/zoo_throughput.py recipes/smollm2-135m-kv-r4.toml --device cuda --steps 40 --batch 8 \
        --k 32 64 128 --sequential 3 --json bench/results/zoo_throughput.json

``--random-init DIR`` builds the base model from DIR's config.json with random weights (same shapes, so
the same time per step) and reads the tokenizer from DIR: timing without carrying the weights.
``--profile`` prints the top GPU kernels of two training steps; ``--eval-batch`` times the labels at
several batch sizes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lolscan.zoo.build import load_base  # noqa: E402
from lolscan.zoo.data import build_pool, load_eval, resolve_root  # noqa: E402
from lolscan.zoo.eval import mc_accuracy, val_losses  # noqa: E402
from lolscan.zoo.multilora import eject, find_targets, pad_batch, train_group  # noqa: E402
from lolscan.zoo.recipe import LoraSpec, Recipe  # noqa: E402


def sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def batches_for(pool, n: int, steps: int, batch: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    seqs = [x for v in pool.train.values() for x in v]
    return [[[seqs[int(i)] for i in torch.randint(len(seqs), (batch,), generator=g)] for _ in range(steps)]
            for _ in range(n)]


def run_sequential(model, recipe, batches, lr: float, dev: str) -> float:
    """The plain way: one peft LoRA at a time, torch AdamW, HF's loss. Returns each LoRA's seconds (the
    first pays the warm-up)."""
    from peft import LoraConfig, get_peft_model

    times = []
    for rows_per_step in batches:
        sync(dev)
        t0 = time.perf_counter()
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=recipe.target_modules, lora_dropout=0.05,
                         task_type="CAUSAL_LM")
        pm = get_peft_model(model, cfg)
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
        pm.train()
        for rows in rows_per_step:
            ids, lengths = pad_batch(rows)
            labels = ids.clone()
            labels[torch.arange(ids.shape[1]).unsqueeze(0) >= lengths.unsqueeze(1)] = -100
            loss = pm(input_ids=ids.to(dev), labels=labels.to(dev)).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        sync(dev)
        times.append(time.perf_counter() - t0)
        model = pm.unload()  # back to the plain base for the next LoRA
    return times


def random_base(folder: str, dtype: str, dev: str):
    """A model with the shapes of folder/config.json and random weights, and the tokenizer beside it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(folder)
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def profile_steps(model, targets, spec, batches) -> str:
    """Top GPU kernels (self time) of two training steps."""
    from torch.profiler import ProfilerActivity, profile

    specs = [LoraSpec(**{**spec.__dict__, "steps": 2}) for _ in range(len(batches))]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        train_group(model, targets, specs, {}, 0, batches=[b[:2] for b in batches])
        torch.cuda.synchronize()
    eject(model, targets)
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=22, max_name_column_width=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--base-path", default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--k", type=int, nargs="*", default=[32, 64], help="group sizes to time (none: only the baseline)")
    ap.add_argument("--compile", action="store_true", help="also time each K with the body under torch.compile")
    ap.add_argument("--sequential", type=int, default=3, help="peft LoRAs to train one after another")
    ap.add_argument("--baseline-json", default=None, metavar="JSON",
                    help="take the sequential figure from an earlier run's JSON instead of measuring it")
    ap.add_argument("--label", action="store_true", help="also time the batched labels (val loss, MC eval)")
    ap.add_argument("--base-eval-full", action="store_true",
                    help="the base model's accuracy on every document of the recipe's benchmarks (max_docs lifted)")
    ap.add_argument("--random-init", default=None, metavar="DIR",
                    help="random weights with DIR/config.json's shapes; tokenizer from DIR")
    ap.add_argument("--eval-batch", type=int, nargs="+", default=None, help="label batch sizes (default: recipe's)")
    ap.add_argument("--profile", action="store_true", help="top GPU kernels of two steps at the first K")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    recipe = Recipe.load(a.recipe)
    dev = a.device
    if a.random_init:
        model, tok = random_base(a.random_init, recipe.base.get("dtype", "float32"), dev)
    else:
        model, tok = load_base(recipe.base, device=dev, path_override=a.base_path)
    root = resolve_root(recipe.data_root, a.data_root)
    pool = build_pool(recipe, tok, root)
    targets = find_targets(model, recipe.target_modules)
    res: dict = {"device": torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu",
                 "base": recipe.base.get("name"), "steps": a.steps, "batch": a.batch, "targets": len(targets),
                 "torch": torch.__version__, "random_init": bool(a.random_init)}
    if a.base_eval_full:
        import dataclasses

        for ev in recipe.evals:
            reqs = load_eval(dataclasses.replace(ev, max_docs=None), tok, root)
            t0 = time.perf_counter()
            r = mc_accuracy(model, 1, reqs, batch=32)
            res[f"base_{ev.name}_acc_full"] = float(r.accuracy[0])
            res[f"base_{ev.name}_docs_full"] = len(reqs)
            res[f"base_{ev.name}_gold_logprob_full"] = float(r.gold_logprob[0])
            print(f"base model {ev.name}: acc {float(r.accuracy[0]):.4f} on {len(reqs)} docs "
                  f"({time.perf_counter() - t0:.1f}s)", flush=True)
    if a.baseline_json:
        base = json.loads(Path(a.baseline_json).read_text())
        s_seq = base["sequential_s_per_lora"]
        res["sequential_from"] = a.baseline_json
        res["sequential_times"] = base.get("sequential_times")
    else:
        seq_batches = batches_for(pool, a.sequential, a.steps, a.batch, 1)
        times = run_sequential(model, recipe, seq_batches, 1e-3, dev)
        s_seq = min(times[1:]) if len(times) > 1 else times[0]  # best after warm-up
        res["sequential_times"] = times
    res["sequential_s_per_lora"] = s_seq
    res["sequential_loras_per_min"] = 60 / s_seq
    rows = [("peft sequential", 1, s_seq, 60 / s_seq, 1.0, float("nan"))]
    print(json.dumps({"sequential_s_per_lora": s_seq, "times": res["sequential_times"]}), flush=True)
    res["multi"] = []
    if a.json:  # the baseline is on disk even if a group below fails
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))
    for k, compiled in [(k, c) for k in a.k for c in ([False, True] if a.compile else [False])]:
        specs = [LoraSpec(index=i, rank=4, layer_ranks=None, alpha=8.0, lr=1e-3, steps=a.steps, batch_size=a.batch,
                          dropout=0.05, weight_decay=0.01, sources=[], split="train") for i in range(k)]
        bs = batches_for(pool, k, a.steps, a.batch, 2)
        name = f"multi K={k}" + (" compiled" if compiled else "")
        if a.profile and dev.startswith("cuda") and k == a.k[0]:
            print(f"== profile: {name}, two steps", flush=True)
            print(profile_steps(model, targets, specs[0], bs), flush=True)
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        try:
            # warm-up (kernels, allocator), then the timed run
            warm = [LoraSpec(**{**s.__dict__, "steps": 2}) for s in specs]
            t0 = time.perf_counter()
            train_group(model, targets, warm, pool.train, 0, batches=[b[:2] for b in bs], compile=compiled)
            eject(model, targets)
            sync(dev)
            t_warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            train_group(model, targets, specs, pool.train, 0, batches=bs, compile=compiled)
            sync(dev)
            t = time.perf_counter() - t0
        except torch.OutOfMemoryError:
            eject(model, targets)
            torch.cuda.empty_cache()
            rows.append((name, k, float("nan"), float("nan"), float("nan"), float("nan")))
            res["multi"].append({"k": k, "compiled": compiled, "oom": True})
            continue
        entry = {"k": k, "compiled": compiled, "warmup_s": t_warm, "s_per_group": t, "loras_per_min": 60 * k / t,
                 "ratio_vs_peft": (60 * k / t) / (60 / s_seq)}
        if dev.startswith("cuda"):
            entry["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if a.label:
            for eb in a.eval_batch or [recipe.eval_batch]:
                sync(dev)
                t0 = time.perf_counter()
                val_losses(model, k, pool.val, batch=eb)
                sync(dev)
                entry[f"val_label_s_b{eb}"] = time.perf_counter() - t0
                for ev in recipe.evals:
                    reqs = load_eval(ev, tok, root)
                    t0 = time.perf_counter()
                    mc_accuracy(model, k, reqs, batch=eb)
                    sync(dev)
                    entry[f"{ev.name}_label_s_b{eb}"] = time.perf_counter() - t0
                    entry[f"{ev.name}_docs"] = len(reqs)
        eject(model, targets)
        res["multi"].append(entry)
        rows.append((name, k, t / k, entry["loras_per_min"], entry["ratio_vs_peft"], entry.get("peak_gib", float("nan"))))
        print(json.dumps(entry), flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
    print(f"\n{res['device']} — {recipe.base.get('name')}, rank 4 on {recipe.target_modules} ({len(targets)} modules), "
          f"{a.steps} steps × batch {a.batch}")
    print(f"{'method':<24}{'K':>5}{'s/LoRA':>10}{'LoRAs/min':>12}{'× peft':>9}{'peak GiB':>10}")
    for name, k, s, lpm, ratio, mem in rows:
        print(f"{name:<24}{k:>5}{s:>10.3f}{lpm:>12.1f}{ratio:>9.1f}{mem:>10.1f}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
