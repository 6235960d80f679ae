"""Folder scoring before/after in one run: the local scan and the per-adapter stage costs of
bench/ray_scan.py for two or more lolscan source trees, on the same folder and checkpoint, on this machine.

Typically this checkout and the commit before a change, checked out beside it with `git worktree`::

    git worktree add --detach /tmp/lolscan-before 853300f
    OMP_NUM_THREADS=1 python3 bench/scan_ab.py --roots /tmp/lolscan-before . --n 120 --sample 48 --rounds 4

Each (round, tree) runs in a fresh interpreter that imports lolscan from that tree alone (``--worker``); the
trees alternate, first-to-last then last-to-first, so load that drifts during the run falls on all of them
alike. Per tree it reports the medians over rounds of

  local scan   `predict DIR -o rows.jsonl` as `lolscan predict` runs it (wall time, adapters/s)
  read         ray_engine._read_one per adapter, one core (header, fit check, factors packed)
  score        ray_engine._ScoreActor per adapter on --device, one thread (stack, predict, domain score, gates)

(read and score: the best of --reps measurements in each round), the best round too, the ratios to the first
tree (median over rounds of each round's ratio: a round's trees run back to back), and how far each tree's JSONL rows are from the first's: statuses, formats,
ranks and in-domain flags must be equal, every number is compared relatively (the largest difference is
printed with where it is). The folder and the checkpoint are bench/scan.py's (`generate`, `make_checkpoint`),
written by this checkout's code when --dir lacks them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def worker(args: argparse.Namespace) -> None:
    """One measurement with lolscan imported from ``args.worker`` only."""
    root = Path(args.worker).resolve()
    sys.path.insert(0, str(BENCH))
    import ray_scan  # imports no lolscan; it and scan.py put this checkout on sys.path, taken off below

    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != BENCH.parent]
    sys.path.insert(0, str(root))
    assert "lolscan" not in sys.modules
    import lolscan

    assert Path(lolscan.__file__).resolve().is_relative_to(root), lolscan.__file__
    files = sorted((args.dir / "loras").glob("*.safetensors"))[: args.n]
    ckpt = args.dir / "ckpt"
    t0 = time.perf_counter()
    local = ray_scan.local_run(files[0].parent, ckpt, Path(args.jsonl), args.device, args.batch_size, args.procs)
    local.pop("rows")
    reps = [ray_scan.stage_costs(files, ckpt, args.device, args.batch_size, min(args.sample, len(files))) for _ in range(args.reps)]
    costs = {**reps[0], **{k: min(r[k] for r in reps) for k in ("read_ms_per_adapter", "score_ms_per_adapter")}}
    Path(args.out).write_text(json.dumps({"local": local, "per_adapter": costs, "seconds": time.perf_counter() - t0}))


def _numbers(a: Any, b: Any, path: str, out: list[tuple[float, str, float, float]]) -> None:
    """Relative differences of every number of two rows; anything else must be equal."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        for k in a:
            _numbers(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _numbers(x, y, f"{path}[{i}]", out)
    elif isinstance(a, float) and isinstance(b, float):
        out.append((0.0 if a == b else abs(a - b) / max(abs(a), abs(b)), path, a, b))
    elif a != b:
        raise SystemExit(f"rows differ at {path}: {a!r} vs {b!r}")


def compare_rows(first: Path, other: Path) -> dict[str, Any]:
    rows = [{json.loads(line)["source"]: json.loads(line) for line in p.read_text().splitlines()} for p in (first, other)]
    if rows[0].keys() != rows[1].keys():
        raise SystemExit(f"{first} and {other} hold different sources")
    diffs: list[tuple[float, str, float, float]] = []
    for source, row in rows[0].items():
        _numbers(row, rows[1][source], Path(source).name, diffs)
    worst = max(diffs, default=(0.0, "", 0.0, 0.0))
    return {"rows": len(rows[0]), "ok": sum(r["status"] == "ok" for r in rows[0].values()), "numbers": len(diffs),
            "max_rel_diff": worst[0], "at": worst[1], "values": worst[2:], "over_1e-6": sum(d[0] > 1e-6 for d in diffs)}


def describe(root: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], check=False, capture_output=True, text=True).stdout.strip()
    except OSError:
        return str(root)
    return f"{root} ({head}{', modified' if dirty else ''})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--roots", nargs="+", type=Path, default=[BENCH.parent], help="lolscan source trees, the first is the baseline")
    ap.add_argument("--n", type=int, default=200, help="number of LoRA files")
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "lolscan-scan-bench")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--procs", default="auto", help="the local scan's reader processes (as `lolscan predict --procs`)")
    ap.add_argument("--sample", type=int, default=64, help="adapters timed in the per-stage measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="per-stage measurements per round (the best is kept)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--jsonl", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    sys.path.insert(0, str(BENCH))
    from scan import generate, make_checkpoint

    files = generate(args.dir, args.n, seed=0)
    make_checkpoint(args.dir, files, "cpu")
    roots = [r.resolve() for r in args.roots]
    work = args.dir / "ab"
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(roots))}
    for rnd in range(args.rounds):
        order = range(len(roots)) if rnd % 2 == 0 else reversed(range(len(roots)))
        for i in order:
            out, jsonl = work / f"{i}_{rnd}.json", work / f"{i}.jsonl"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(roots[i]), "--out", str(out), "--jsonl", str(jsonl),
                   "--dir", str(args.dir), "--n", str(args.n), "--device", args.device, "--batch-size", str(args.batch_size),
                   "--procs", args.procs, "--sample", str(args.sample), "--reps", str(args.reps)]
            env = {**os.environ, "PYTHONPATH": str(roots[i])}
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            runs[i].append(json.loads(out.read_text()))
            r = runs[i][-1]
            print(f"round {rnd + 1} tree {i}: local {r['local']['adapters_per_s']:.1f} adapters/s, score "
                  f"{r['per_adapter']['score_ms_per_adapter']:.2f} ms, read {r['per_adapter']['read_ms_per_adapter']:.2f} ms", file=sys.stderr)

    keys = {"local_adapters_per_s": lambda r: r["local"]["adapters_per_s"], "local_wall_s": lambda r: r["local"]["wall_s"],
            "read_ms_per_adapter": lambda r: r["per_adapter"]["read_ms_per_adapter"],
            "score_ms_per_adapter": lambda r: r["per_adapter"]["score_ms_per_adapter"]}
    table = []
    for i, root in enumerate(roots):
        t: dict[str, Any] = {"root": describe(root)}
        for k, f in keys.items():
            vals = [f(r) for r in runs[i]]
            t[k] = statistics.median(vals)
            t[f"{k}_best"] = max(vals) if k == "local_adapters_per_s" else min(vals)
        if i:
            t["local_speedup"] = statistics.median(f["local"]["adapters_per_s"] / b["local"]["adapters_per_s"] for f, b in zip(runs[i], runs[0]))
            t["score_speedup"] = statistics.median(b["per_adapter"]["score_ms_per_adapter"] / f["per_adapter"]["score_ms_per_adapter"]
                                                   for f, b in zip(runs[i], runs[0]))
            t["rows_vs_first"] = compare_rows(work / "0.jsonl", work / f"{i}.jsonl")
        t["rounds"] = runs[i]
        table.append(t)
    print(f"\n{args.n} SD1.5-shaped LoRAs ({args.dir}), device {args.device}, batch {args.batch_size}, {os.cpu_count()} cores, "
          f"{platform.node()}; median (best) of {args.rounds} rounds")
    print(f"{'tree':48} {'local scan, adapters/s':>24} {'score ms/adapter':>18} {'read ms/adapter':>18}")
    for t in table:
        print(f"{t['root'][-48:]:48} {t['local_adapters_per_s']:14.1f} ({t['local_adapters_per_s_best']:5.1f}) "
              f"{t['score_ms_per_adapter']:10.2f} ({t['score_ms_per_adapter_best']:5.2f}) {t['read_ms_per_adapter']:10.2f} ({t['read_ms_per_adapter_best']:5.2f})")
        if "rows_vs_first" in t:
            c = t["rows_vs_first"]
            print(f"{'':4}vs the first (median of paired rounds): local scan {t['local_speedup']:.2f}× the adapters/s, score "
                  f"{t['score_speedup']:.2f}× faster; rows: {c['rows']} ({c['ok']} ok), same statuses and flags, {c['numbers']} "
                  f"numbers, largest relative difference {c['max_rel_diff']:.2e} at {c['at']} {tuple(c['values'])}, {c['over_1e-6']} above 1e-6")
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "device": args.device, "batch_size": args.batch_size, "cpus": os.cpu_count(),
                                         "machine": platform.node(), "rounds": args.rounds, "reps": args.reps, "sample": args.sample,
                                         "trees": table}, indent=2))


if __name__ == "__main__":
    main()
