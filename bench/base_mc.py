"""Is a multiple-choice label meaningful for a base model? Its accuracy on OLMES MC requests, with the
binomial standard error and the chance level, before a zoo is built on it (issue 17: "measure first").

    python bench/base_mc.py recipes/smollm2-135m-kv-r4-v2.toml \
        oe_eval_tasks/arc_easy/test_mc_5shot/requests.jsonl.gz oe_eval_tasks/arc_challenge/test_mc_5shot/requests.jsonl.gz \
        --max-docs 300 --device cpu
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv: list[str] | None = None) -> list[dict]:
    from lolscan.zoo.build import load_base
    from lolscan.zoo.data import load_eval, resolve_root
    from lolscan.zoo.eval import mc_accuracy
    from lolscan.zoo.recipe import EvalSet, Recipe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="the recipe whose [base] to load")
    ap.add_argument("requests", nargs="+", help="request files, relative to the data root")
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--base-path", default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)
    recipe = Recipe.load(args.recipe)
    model, tok = load_base(recipe.base, device=args.device, dtype=args.dtype, path_override=args.base_path)
    root = resolve_root(recipe.data_root, args.data_root)
    out = []
    for req in args.requests:
        reqs = load_eval(EvalSet(name="x", requests=req, max_docs=args.max_docs), tok, root)
        t0 = time.perf_counter()
        with torch.no_grad():
            r = mc_accuracy(model, 1, reqs, batch=args.batch)
        acc, n = float(r.accuracy[0]), len(reqs)
        chance = sum(1 / len(q.continuations) for q in reqs) / n
        row = {"requests": req, "questions": n, "acc": acc, "se": (acc * (1 - acc) / n) ** 0.5, "chance": chance,
               "acc_per_char": float(r.metric("acc_per_char")[0]), "gold_logprob": float(r.gold_logprob[0]),
               "seconds": time.perf_counter() - t0}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


if __name__ == "__main__":
    main()
