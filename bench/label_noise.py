"""The R² ceiling that measurement noise leaves an accuracy label of a zoo (issue 17).

    python bench/label_noise.py ZOO/manifest.jsonl --label arc_c_acc --questions 1172
    python bench/label_noise.py ZOO/manifest.jsonl --label arc_c_acc --bootstrap 500   # needs arc_c_correct
    python bench/label_noise.py ZOO/manifest.jsonl --label arc_c_acc --questions 1172 --max-lr 1e-3   # healthy LoRAs
    python bench/label_noise.py A/manifest.jsonl --label arc_c_acc --questions 1172 --retest B/manifest.jsonl
    python bench/label_noise.py ZOO/manifest.jsonl --label clip_score --halves   # clip_score_s<k> per seed
    python bench/label_noise.py ZOO/manifest.jsonl --label arc_c_acc --questions 1172 --lr-bins 1e-5 1e-4 1e-3 1e-2

Binomial: per-adapter p(1-p)/(N-1) averaged, against the label's variance over the zoo (finite adapters,
``--split`` to restrict, ``--max-lr`` to keep the LoRAs trained with lr ≤ that: a recipe's healthy range,
a cut on the recipe, not on the label). Bootstrap: questions resampled from the stored per-question correctness
(``<eval>_correct``, recipe ``[data] store_correct = true``). Retest: the same adapter ids labelled in a
second manifest. Lr bins: the label's mean and spread among the LoRAs of each learning-rate range (edges
given; bin k holds e_k ≤ lr < e_k+1), with the binomial noise sd beside it (``--questions``): where a spread
is no larger than that noise, nothing can rank those LoRAs on the label. Halves: a label that is a mean over sampling seeds, from its per-seed columns
(``<label>_s<k>``; a diffusion zoo's CLIP score), the first half of the seeds against the second. See
`lolscan.evaluation.noise`.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math

import numpy as np

from lolscan.evaluation.noise import (
    binomial_r2_ceiling,
    bootstrap_r2_ceiling,
    halves_r2_ceiling,
    repeat_r2_ceiling,
    unpack_correct,
)


def read_rows(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest")
    ap.add_argument("--label", default="arc_c_acc")
    ap.add_argument("--questions", type=int, help="N questions behind each accuracy (binomial ceiling)")
    ap.add_argument("--bootstrap", type=int, default=0, help="resamples over questions (needs <eval>_correct)")
    ap.add_argument("--retest", help="a second manifest labelling the same adapter ids")
    ap.add_argument("--halves", action="store_true", help="split-half ceiling from the per-seed columns <label>_s<k>")
    ap.add_argument("--split", default=None, help="train|val|test (default: every row)")
    ap.add_argument("--max-lr", type=float, default=None, help="only the LoRAs trained with lr <= this (the healthy bulk)")
    ap.add_argument("--lr-bins", type=float, nargs="+", default=None, metavar="EDGE",
                    help="learning-rate edges: the label's mean and sd per range (with the binomial noise sd)")
    args = ap.parse_args(argv)
    rows = [r for r in read_rows(args.manifest) if r.get("finite", True) and (args.split in (None, r.get("split")))]
    rows = [r for r in rows if isinstance(r.get(args.label), (int, float)) and math.isfinite(r[args.label])]
    if args.max_lr is not None:
        rows = [r for r in rows if isinstance(r.get("lr"), (int, float)) and r["lr"] <= args.max_lr]
    out: dict = {"manifest": args.manifest, "label": args.label, "n": len(rows)}
    if args.max_lr is not None:
        out["max_lr"] = args.max_lr
    acc = np.array([r[args.label] for r in rows])
    if args.questions:
        out["binomial"] = binomial_r2_ceiling(acc, args.questions)
    if args.bootstrap:
        col = args.label.removesuffix("_acc") + "_correct"
        if not args.questions:
            ap.error("--bootstrap needs --questions (the bitstrings are padded to whole bytes)")
        bits = np.stack([unpack_correct(r[col], args.questions) for r in rows])
        out["bootstrap"] = bootstrap_r2_ceiling(bits, n_boot=args.bootstrap)
    if args.retest:
        other = {r["id"]: r.get(args.label) for r in read_rows(args.retest)}
        pairs = [(r[args.label], other[r["id"]]) for r in rows if isinstance(other.get(r["id"]), (int, float))]
        out["retest"] = repeat_r2_ceiling([a for a, _ in pairs], [b for _, b in pairs])
    if args.halves:
        cols = sorted((k for k in rows[0] if k.startswith(args.label + "_s") and k[len(args.label) + 2:].isdigit()),
                      key=lambda k: int(k[len(args.label) + 2:])) if rows else []
        if len(cols) < 2:
            ap.error(f"--halves needs per-seed columns {args.label}_s0, {args.label}_s1, … in the manifest")
        out["halves"] = halves_r2_ceiling([[r[c] for c in cols] for r in rows])
    if args.lr_bins:
        out["lr_bins"] = lr_bins(rows, args.label, sorted(args.lr_bins), args.questions)
    print(json.dumps(out, indent=2))
    return out


def lr_bins(rows: list[dict], label: str, edges: list[float], questions: int | None) -> list[dict]:
    """Per learning-rate range [e_k, e_k+1): n, the label's mean and sd (population), and with ``questions``
    the binomial noise sd √(mean p(1 − p)/(N − 1)) of one LoRA's accuracy there."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        y = np.array([r[label] for r in rows if lo <= r["lr"] < hi])
        b: dict = {"lo": lo, "hi": hi, "n": int(y.size)}
        if y.size:
            b |= {"mean": float(y.mean()), "sd": float(y.std()), "min": float(y.min()), "max": float(y.max())}
            if questions:
                b["noise_sd"] = float(math.sqrt(np.mean(y * (1 - y)) / (questions - 1)))
        out.append(b)
    return out


if __name__ == "__main__":
    main()
