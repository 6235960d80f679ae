"""Which attention path gives NaN factors for packed rows of 4 examples (real Qwen, GPU)?"""
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import lolscan.zoo.multilora as ml
from lolscan.zoo.build import load_base
from lolscan.zoo.data import build_pool, resolve_root
from lolscan.zoo.recipe import Recipe, sample_specs

r = Recipe.load(sys.argv[1])
model, tok = load_base(r.base, device="cuda", path_override=sys.argv[2])
targets = ml.find_targets(model, r.target_modules)
specs = [s for s in sample_specs(r, targets) if s.batch_size == 4 and s.lr < 3e-3][:24]
pool = build_pool(r, tok, resolve_root(r.data_root))


def run(name, **kw):
    t0 = time.time()
    mods, losses = ml.train_group(model, targets, specs, pool.train, 0, "linear", **kw)
    bad = sum(bool(torch.isnan(m.lora_A).any() or torch.isnan(m.lora_B).any()) for m in mods.values())
    per = [int(torch.isnan(torch.stack([m.lora_B[k] for m in mods.values()])).any()) for k in range(len(specs))]
    print(f"{name}: modules with NaN {bad}, adapters with NaN {sum(per)}/{len(specs)}, "
          f"last loss {[round(float(x), 2) for x in losses[0, :4]]} {time.time() - t0:.1f}s", flush=True)
    ml.eject(model, targets)


run("packed")
run("padded", layout="padded")
with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
    run("packed-efficient")
orig = ml.packed_mask
ml.packed_mask = lambda seg, dt: orig(seg, dt).clamp(min=-1e4)
run("packed-bias-1e4")
ml.packed_mask = lambda seg, dt: orig(seg, dt) == 0
run("packed-bool")
