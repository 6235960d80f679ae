"""Test R² in user units of a positive, heavy-tailed regression label trained with and without the log
transform (`lolscan.targets.Target.transform`), and what `train`'s automatic choice keeps, over seeds.

    python bench/log_target.py --task exp    --n 400 --seeds 0 1 2 --threads 1 --markdown
    python bench/log_target.py --task energy --n 400 --seeds 0 1 2 --threads 1 --markdown

Tasks (labels are known functions of ΔW):

- ``energy``: `lolscan.training.write_heavy_tailed_zoo`'s ``energy`` = ‖ΔW₀‖_F², where every 7th adapter
  is "broken" (ΔW ×k, k log-uniform in [10, 100], so its label ×10²–10⁴).
- ``exp``: `write_synthetic_zoo` with y = exp(3·‖ΔW₀‖_F) (its ``norm`` column), the case of
  tests/test_train_log_target.py.

Arms per seed (the split seed and the training seed): ``none`` (transform off), ``log`` (forced: the
hyperparameter search itself runs on the log), ``auto`` (what `lolscan train` does: the search, then the
log candidate kept if its validation MSE in user units is lower). Each row: test R², Kendall τ and the
90 % interval's coverage on the test split, and for ``auto`` the transform it kept.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ARMS = ("none", "log", "auto")


def make_zoo(task: str, folder: Path, n: int, layers: int) -> tuple[Path, str]:
    """The manifest and label column of a task."""
    from lolscan.training import write_heavy_tailed_zoo, write_synthetic_zoo

    if task == "energy":
        return write_heavy_tailed_zoo(folder, n=n, layers=layers, shape=(16, 12), seed=0), "energy"
    manifest = write_synthetic_zoo(folder, n=n, layers=max(layers, 3), seed=0)
    with open(manifest) as fh:
        rows = list(csv.DictReader(fh))
    out = folder / "exp.csv"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "y", "group"])
        w.writeheader()
        for r in rows:
            w.writerow({"path": r["path"], "y": f"{math.exp(3.0 * float(r['norm'])):.10g}", "group": r["group"]})
    return out, "y"


def run(manifest: Path, label: str, arm: str, seed: int, arch: str, max_steps: int, threads: int) -> dict:
    from lolscan.manifest import read_manifest
    from lolscan.training import TrainOptions, prepare, train

    ds = prepare(read_manifest(manifest), [label], seed=seed, progress=False)
    t0 = time.perf_counter()
    res = train(ds, TrainOptions(arch=arch, seed=seed, max_steps=max_steps, progress=False, threads=threads, transform=arm))
    m = res.metrics["test"][label]
    return {"arm": arm, "seed": seed, "r2": m["r2"], "tau": m["kendall_tau"], "coverage": m.get("interval_coverage"),
            "transform": ds.targets[0].transform, "tried": res.tried, "seconds": round(time.perf_counter() - t0, 1),
            "n_test": m["n"]}


def mean_sd(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    mu = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return f"{mu:.3f} ± {sd:.3f}"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=("energy", "exp"), default="energy")
    ap.add_argument("--n", type=int, default=400, help="adapters")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--arch", default="glnet")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-steps", type=int, default=2000, help="lolscan train's default")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--zoo", type=Path, default=None, help="where to write the zoo (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write every run here")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    n = args.n
    with tempfile.TemporaryDirectory() as tmp:
        manifest, label = make_zoo(args.task, args.zoo or Path(tmp) / "zoo", n, args.layers)
        rows = []
        for seed in args.seeds:
            for arm in ARMS:
                r = run(manifest, label, arm, seed, args.arch, args.max_steps, args.threads)
                rows.append(r)
                print(f"seed {seed} {arm:4s}: R² {r['r2']:.3f}  τ {r['tau']:.3f}  coverage {r['coverage']}  "
                      f"transform {r['transform']}  {r['seconds']} s", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    bar = "|" if args.markdown else " "
    print(f"{args.task}, {args.arch}, n={n}, {len(args.seeds)} seeds; test split {rows[0]['n_test']} rows")
    print(f"{bar} arm {bar} test R² {bar} Kendall τ {bar} 90 % coverage {bar} per seed R² {bar} kept {bar}")
    if args.markdown:
        print("|---|---|---|---|---|---|")
    for arm in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        per_seed = ", ".join(f"{r['r2']:.3f}" for r in rs)
        kept = ", ".join(r["transform"] for r in rs)
        print(f"{bar} {arm} {bar} {mean_sd([r['r2'] for r in rs])} {bar} {mean_sd([r['tau'] for r in rs])} {bar} "
              f"{mean_sd([r['coverage'] for r in rs])} {bar} {per_seed} {bar} {kept} {bar}")
    return rows


if __name__ == "__main__":
    main()
