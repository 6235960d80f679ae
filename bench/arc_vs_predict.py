"""`lolscan predict` vs really evaluating one LoRA on ARC-Challenge, in the same process.

    python bench/arc_vs_predict.py RECIPE ADAPTER --model CHECKPOINT --base-path BASE --device cuda

Evaluation = what a user without a predictor does: load the adapter with peft, merge it into the base
model, and score every ARC-C test question (5-shot, log-likelihood of each answer letter, the usual
lm-eval way: each request's full context, batched). Loading the base model is not counted (it is paid
once). The prefix-cached variant (the zoo builder's trick) is timed too, as a stronger baseline.
Prediction = `lolscan.load(adapter)` + the checkpoint's forward. The accuracy on the first
`max_docs` questions is also compared with the zoo's own label for that adapter (an independent check
of the zoo's batched multi-adapter evaluation through peft's merge).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

import lolscan
from lolscan.checkpoint import load_checkpoint, resolve
from lolscan.zoo.build import load_base
from lolscan.zoo.data import load_eval, resolve_root
from lolscan.zoo.eval import mc_accuracy
from lolscan.zoo.recipe import Recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("adapter", help="a zoo adapter folder (PEFT)")
    ap.add_argument("--model", required=True, help="lolscan checkpoint name or folder")
    ap.add_argument("--base-path", default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--label", default=None, help="the zoo's manifest row for this adapter (JSON), to compare")
    ap.add_argument("--json")
    args = ap.parse_args()
    from peft import PeftModel

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    recipe = Recipe.load(args.recipe)
    ev = recipe.evals[0]
    base, tok = load_base(recipe.base, device=args.device, path_override=args.base_path)
    root = resolve_root(recipe.data_root, args.data_root)
    reqs = load_eval(dataclasses.replace(ev, max_docs=None), tok, root)
    out: dict = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                 "questions": len(reqs), "adapter": args.adapter}

    mc_accuracy(base, 1, reqs[:args.batch], batch=args.batch)  # warm-up: kernels, allocator
    for i, (name, min_prefix) in enumerate((("eval_s", 10**9), ("eval_prefix_cached_s", 16))):
        if i:  # the merge changed the base weights in place: start again from the unmerged model
            base, tok = load_base(recipe.base, device=args.device, path_override=args.base_path)
        sync()
        t0 = time.perf_counter()
        model = PeftModel.from_pretrained(base, args.adapter).merge_and_unload()
        res = mc_accuracy(model, 1, reqs, batch=args.batch, min_shared_prefix=min_prefix)
        sync()
        out[name] = time.perf_counter() - t0
        out[name.replace("_s", "_acc")] = float(res.accuracy[0])
        n = ev.max_docs or len(reqs)  # the zoo's label covers the first n questions
        gold = torch.tensor([r.gold for r in reqs[:n]])
        out[name.replace("_s", f"_acc_first_{n}")] = float((res.scores[0, :n].argmax(-1) == gold).double().mean())
    del base, model

    ck = load_checkpoint(resolve(args.model), device=args.device)
    times = []
    for _ in range(args.repeats + 1):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            pred = ck.predict([lolscan.load(args.adapter)])  # fit check + forward + denormalise
        sync()
        times.append(time.perf_counter() - t0)
    out["predict_s"] = statistics.median(times[1:])
    out["prediction"] = pred[0]
    out["speedup"] = out["eval_s"] / out["predict_s"]
    out["speedup_vs_prefix_cached"] = out["eval_prefix_cached_s"] / out["predict_s"]
    if args.label:
        out["zoo_label"] = json.loads(Path(args.label).read_text()) if Path(args.label).exists() else json.loads(args.label)
    print(json.dumps(out, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
