"""Checkpoints side by side on one split of a zoo, with the recipe baselines fitted on its training split: does a
new checkpoint replace a shipped one? (issue 17: "keep an old checkpoint only where it is better, and say so").

    python3 bench/checkpoints_on_split.py ZOO/manifest.jsonl --model OLD --model NEW [--split test] \
        [--healthy-lr 1e-3] [--json OUT.json]

Every checkpoint scores the split's adapters as `lolscan eval` does (bench/new_rows.py's `checkpoint_scores`); the
hyperparameter-only baselines (`lolscan.evaluation.compare`: ridge, and trees where scikit-learn is installed) are
fitted on the manifest's train and val rows (as `lolscan train` fits them for a card), less the split scored. One table per target the checkpoints share: the headline metric, Kendall τ on
the healthy rows (lr ≤ --healthy-lr, regression) and the paired bootstrap 95 % CI of (row − best row), the split's
adapters resampled together for every row.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hp_baseline import read_rows  # noqa: E402  (bench/ on the path first)
from new_rows import checkpoint_scores, print_table, recipe_table  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", type=Path, help="a zoo's manifest.jsonl with a split column (its adapters beside it)")
    ap.add_argument("--model", "-m", action="append", required=True, help="checkpoint name or folder (repeatable)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--healthy-lr", type=float, default=1e-3)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--json", type=Path, help="also write the tables here")
    args = ap.parse_args(argv)

    rows = read_rows(args.manifest)
    split = [r for r in rows if r.get("split") == args.split]
    fit = [r for r in rows if r.get("split") in ("train", "val") and r.get("split") != args.split]
    if not split or not fit:
        sys.exit(f"error: {args.manifest}: no rows with split {args.split!r}, or no train/val rows to fit the recipe on")
    ids = {r["id"] for r in split}
    scored = {}  # label → (checkpoint, {target: {id: score}})
    for model in args.model:
        ckpt, scores = checkpoint_scores(args.manifest, model, ids)
        scored[ckpt.name if ckpt.name not in scored else f"{ckpt.name} [{model}]"] = (ckpt, scores)
    first = next(iter(scored.values()))[0]
    out: dict = {"manifest": str(args.manifest), "split": args.split, "targets": {}}
    for t in first.targets:
        if not all(any(u.name == t.name for u in ck.targets) for ck, _ in scored.values()):
            print(f"{t.name}: not predicted by every checkpoint, skipped")
            continue
        here = [r for r in split if r.get(t.column) is not None and all(r["id"] in s[t.name] for _, s in scored.values())]
        train = [r for r in fit if r.get(t.column) is not None]
        table, best, healthy, cols = recipe_table(t, here, train, {k: s[t.name] for k, (_, s) in scored.items()},
                                                  healthy_lr=args.healthy_lr, reps=args.bootstrap)
        out["targets"][t.name] = {"rows": len(here), "healthy": len(healthy or []), "best": best, "table": table,
                                  "recipe_columns": cols, "fitted_on": len(train)}
        print(f"{t.name}: {len(here)} {args.split} LoRAs ({len(healthy or [])} healthy), baselines fitted on "
              f"{len(train)} other rows")
        print_table(table, best)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out

if __name__ == "__main__":
    main()
