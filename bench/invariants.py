"""The synthetic invariant suite: every architecture on labels that are known functions of ΔW.

    python bench/invariants.py --sizes 100 200 1000 --seeds 5 --workers 16 --json out.json
    python bench/invariants.py --from-json out.json [more.json ...] --markdown

Tasks and zoos are in ``bench/invariant_tasks.py``. For each zoo variant and training-set size N
the adapters are drawn once (train N, validation max(N/4, 50), test 500 from another seed), and
each row trains one model per task with ``lolscan.training.train`` as ``lolscan train`` does
(its defaults, one target). Seeds re-initialise the model and reshuffle minibatches. The table
gives mean ± sd over seeds of the test R² (regression) or accuracy (classes), and for the
default row a paired bootstrap 95 % CI of (default − best other row): test adapters are
resampled together for both rows, metrics averaged over the seeds both rows finished.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_experiments  # noqa: E402

# Rows of the table: name -> (architecture, hyperparameters). "glnet" is what `lolscan train` uses
# by default; "glnet-v1" is GL-net as it was before the suite existed (kept for comparison).
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp": ("mlp", {}),
    "mlp-oalign": ("mlp-oalign", {}),
    "mlp-svd": ("mlp-svd", {}),
    "mlp-dense": ("mlp-dense", {}),
    "glnet-v1": ("glnet", {"d": 32, "depth": 1, "hidden": 64, "layers": 2, "scale": "rms", "squash": "none",
                           "spectral": 0, "head_norm": False, "products": True}),
    "glnet": ("glnet", {}),
    # the default with the spectral head's linear skip (GLNet `skip`) always on, or off, instead of chosen by the search
    "glnet-skip": ("glnet", {"skip": True}),
    "glnet-noskip": ("glnet", {"skip": False}),
    # the default with whole-spectrum summaries beside the top singular values (GLNet `summaries`)
    "glnet-sum": ("glnet", {"summaries": True}),
    # the default search with the spectral head reading log(σ/ref) (GLNet `log_spectra`), every candidate
    "glnet-log": ("glnet", {"log_spectra": True}),
}
DEFAULT_ROW = "glnet"
TEST_SIZE = 500


def split_sizes(n_train: int) -> tuple[int, int, int]:
    return n_train, max(n_train // 4, 50), TEST_SIZE


_DATA: dict[tuple[str, int], Any] = {}


def zoo_data(zoo: str, n_train: int):
    """(adapters, deltas, facts, splits) for one zoo variant and size; cached per process."""
    from invariant_tasks import make_zoo

    key = (zoo, n_train)
    if key not in _DATA:
        n_tr, n_val, n_te = split_sizes(n_train)
        a1, d1, f1 = make_zoo(zoo, n_tr + n_val, seed=1000 + n_train)
        a2, d2, f2 = make_zoo(zoo, n_te, seed=7)  # one test set for every size
        splits = {"train": list(range(n_tr)), "val": list(range(n_tr, n_tr + n_val)),
                  "test": list(range(n_tr + n_val, n_tr + n_val + n_te))}
        _DATA[key] = (a1 + a2, d1 + d2, f1 + f2, splits)
    return _DATA[key]


def dataset_for(task_id: str, n_train: int):
    """A `lolscan.training.Dataset` for one task, built in memory (no files)."""
    from invariant_tasks import labels, task

    from lolscan.nets import LayerSpec
    from lolscan.targets import fit_normalisation, layout, make_target
    from lolscan.training import Dataset

    t = task(task_id)
    adapters, deltas, facts, splits = zoo_data(t.zoo, n_train)
    values = labels(t, deltas, facts)
    target = make_target(t.name, values, t.kind)
    layout([target])
    fit_normalisation(target, [values[i] for i in splits["train"]])
    spec = LayerSpec.from_adapters(adapters)
    return Dataset(None, adapters, [target], {t.name: values}, splits, spec, "synthetic", "column", 0)


def run_one(row: str, task_id: str, n_train: int, seed: int, device: str = "cpu") -> dict[str, Any]:
    import torch

    from lolscan.errors import LolscanError
    from lolscan.training import TrainOptions, run_safely, train

    torch.set_num_threads(1)
    ds = dataset_for(task_id, n_train)
    arch, hp = ROWS[row]
    opts = TrainOptions(arch=arch, hparams=dict(hp), seed=seed, device=device, progress=False)
    t0 = time.perf_counter()
    try:
        res = run_safely(lambda: train(ds, opts))
    except LolscanError as exc:
        return {"row": row, "task": task_id, "n": n_train, "seed": seed, "error": str(exc)}
    target = ds.targets[0]
    y, mask = target.encode([ds.values[target.name][i] for i in ds.splits["test"]])
    scores = res.test_scores[target.name]
    if target.kind == "regression":
        true = target.to_units(y[:, 0]).tolist()
        pred = scores[:, 0].tolist()
    elif target.kind == "binary":
        true, pred = y[:, 0].tolist(), scores[:, 0].tolist()
    else:
        true, pred = y[:, 0].tolist(), scores.argmax(1).tolist()
    m = res.metrics["test"][target.name]
    headline = m.get("r2") if target.kind == "regression" else m.get("accuracy")
    extra: dict[str, Any] = {}
    if "interval_coverage" in m:  # the 90 % conformal interval on the 500 test adapters
        extra["coverage"] = m["interval_coverage"]
    if row == DEFAULT_ROW:  # share of the test adapters (drawn like the training ones) flagged in domain
        from lolscan.training import fit_domain_for
        from lolscan.training.save import _spectra_of

        dom = fit_domain_for(ds)
        extra["in_domain"] = float((dom.scores(_spectra_of(ds, "test")) <= dom.threshold).double().mean())
    return {"row": row, "task": task_id, "kind": target.kind, "n": n_train, "seed": seed, "metric": headline,
            "best_step": res.best_step, "steps": res.steps, "seconds": round(time.perf_counter() - t0, 2),
            "true": [float(f"{x:.7g}") for x in true], "pred": [float(f"{x:.6g}") for x in pred], "chosen": res.chosen,
            **extra}


def _load(path: Path) -> dict[str, Any]:
    import gzip

    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    data = json.loads(raw)
    truth = data.get("truth", {})
    for r in data["runs"]:  # the labels of the test split are stored once per task
        if "true" not in r and r.get("task") in truth:
            r["true"] = truth[r["task"]]
    return data


def _dump(path: Path, runs: list[dict[str, Any]], args: dict[str, str]) -> None:
    import gzip

    truth: dict[str, list[float]] = {}
    slim = []
    for r in runs:
        r = dict(r)
        if "true" in r:
            truth.setdefault(r["task"], r.pop("true"))
        slim.append(r)
    raw = json.dumps({"runs": slim, "truth": truth, "args": args}).encode()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(gzip.compress(raw, 6) if path.suffix == ".gz" else raw)
    os.replace(tmp, path)


def paired_bootstrap(runs_a: list[dict], runs_b: list[dict], reps: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean over paired seeds of metric(a) − metric(b), with a 95 % CI from resampling test rows
    (lolscan.evaluation.compare.paired_bootstrap; a multiclass run's ``pred`` is the class index)."""
    from lolscan.evaluation.compare import paired_bootstrap as paired

    by_seed_b = {r["seed"]: r for r in runs_b}
    pairs = [(r, by_seed_b[r["seed"]]) for r in runs_a if r["seed"] in by_seed_b]
    if not pairs:
        return math.nan, math.nan, math.nan
    kind = pairs[0][0]["kind"]
    return paired(kind, pairs[0][0]["true"], [a["pred"] for a, _ in pairs], [b["pred"] for _, b in pairs], reps=reps, seed=seed)


def mean_sd(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(runs: list[dict], reps: int = 1000, default: str = DEFAULT_ROW) -> list[dict[str, Any]]:
    """One entry per (task, n): mean ± sd per row, best other row, and the paired CI."""
    groups: dict[tuple[str, int], dict[str, list[dict]]] = {}
    for r in runs:
        if "error" in r:
            continue
        groups.setdefault((r["task"], r["n"]), {}).setdefault(r["row"], []).append(r)
    out = []
    for (task_id, n), rows in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        stats = {row: mean_sd([r["metric"] for r in rs]) for row, rs in rows.items()}
        entry: dict[str, Any] = {"task": task_id, "n": n, "kind": next(iter(rows.values()))[0]["kind"],
                                 "rows": {k: {"mean": v[0], "sd": v[1], "seeds": len(rows[k])} for k, v in stats.items()}}
        # the other architectures: GL-net variants (the old default, an older search) are not "other"
        others = {k: v for k, v in stats.items() if not k.startswith("glnet") and not math.isnan(v[0])}
        if default in rows and others:
            best = max(others, key=lambda k: others[k][0])
            d, lo, hi = paired_bootstrap(rows[default], rows[best], reps=reps)
            entry.update(best_other=best, diff=d, ci=[lo, hi])
        out.append(entry)
    return out


def fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def print_table(summary: list[dict[str, Any]], rows: list[str], markdown: bool) -> None:
    head = ["task", "N", "metric"] + rows + ["default − best other [95 % CI]"]
    lines = []
    for e in summary:
        cells = [e["task"], str(e["n"]), "R²" if e["kind"] == "regression" else "acc"]
        for row in rows:
            s = e["rows"].get(row)
            cells.append("–" if s is None else f"{fmt(s['mean'])} ± {fmt(s['sd'])}")
        if "diff" in e:
            cells.append(f"{fmt(e['diff'])} [{fmt(e['ci'][0])}, {fmt(e['ci'][1])}] vs {e['best_other']}")
        else:
            cells.append("")
        lines.append(cells)
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for cells in lines:
            print("| " + " | ".join(cells) + " |")
    else:
        widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        for cells in lines:
            print("  ".join(c.ljust(w) for c, w in zip(cells, widths)))


def _worker(job: tuple[str, str, int, int, str]) -> dict[str, Any]:
    return run_one(*job)


def main() -> None:
    from invariant_tasks import TASKS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="*", help="task ids (default: all); see bench/invariant_tasks.py")
    ap.add_argument("--rows", nargs="*", default=list(ROWS), help=f"rows (default: {' '.join(ROWS)})")
    ap.add_argument("--sizes", nargs="*", type=int, default=[200])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hard-at", type=int, default=1000, help="tasks marked hard run only at this size (and above)")
    ap.add_argument("--json", type=Path, help="write every run here (rewritten as runs finish; gzipped if it ends in .gz)")
    ap.add_argument("--from-json", nargs="+", type=Path, help="print the table of saved runs (merged)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--default", default=DEFAULT_ROW, help="the row compared with the best other architecture")
    ap.add_argument("--rename", nargs="*", default=[], metavar="FILE_INDEX:OLD=NEW",
                    help="with --from-json: rename a row of the i-th file (0-based), e.g. 0:glnet=glnet-2way")
    ap.add_argument("--search-margin", type=float, metavar="M",
                    help="an experiment: lolscan.training.search.SEARCH_MARGIN set to M for every run (workers fork after it is set)")
    ap.add_argument("--search-log", action="store_true",
                    help="an experiment: GL-net's search (lolscan.training.search.SEARCH) tries the spectral head with "
                         "log(σ/ref) (`log_spectra`) after its other candidates, kept on the usual margin and confidence")
    args = ap.parse_args()
    search_experiments.apply(args.search_margin, args.search_log)

    if args.from_json:
        renames: dict[int, dict[str, str]] = {}
        for item in args.rename:
            idx, _, pair = item.partition(":")
            old, _, new = pair.partition("=")
            renames.setdefault(int(idx), {})[old] = new
        runs = []
        for i, p in enumerate(args.from_json):
            for r in _load(p)["runs"]:
                r["row"] = renames.get(i, {}).get(r["row"], r["row"])
                runs.append(r)
        present = list(dict.fromkeys(r["row"] for r in runs))
        order = [r for r in ROWS if r in present] + [r for r in present if r not in ROWS]
        print_table(summarise(runs, args.bootstrap, args.default), order, args.markdown)
        return
    tasks = args.tasks or [t.id for t in TASKS]
    by_id = {t.id: t for t in TASKS}
    jobs = []
    for n in args.sizes:
        for tid in tasks:
            if by_id[tid].hard and n < args.hard_at:
                continue
            for row in args.rows:  # (mlp and mlp-oalign read the mixed zoo zero-padded to its largest rank)
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    jobs.append((row, tid, n, seed, args.device))
    # sizes in the order given (the one a verdict needs first); jobs of one zoo together so workers reuse the cache
    jobs.sort(key=lambda j: (args.sizes.index(j[2]), by_id[j[1]].zoo, j[1], j[3], j[0]))
    print(f"{len(jobs)} runs on {args.workers} workers", file=sys.stderr)
    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def save() -> None:
        if args.json:
            _dump(args.json, runs, {k: str(v) for k, v in vars(args).items()})

    if args.workers <= 1:
        results = map(_worker, jobs)
    else:
        import multiprocessing as mp

        pool = mp.get_context("fork").Pool(args.workers, maxtasksperchild=50)
        results = pool.imap_unordered(_worker, jobs, chunksize=1)
    for k, r in enumerate(results, 1):
        runs.append(r)
        if k % 10 == 0 or k == len(jobs):
            save()
            print(f"{k}/{len(jobs)} runs, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    save()
    present = {r["row"] for r in runs}
    print_table(summarise(runs, args.bootstrap), [r for r in ROWS if r in present], args.markdown)


if __name__ == "__main__":
    main()
