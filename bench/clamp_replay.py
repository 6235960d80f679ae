"""What keeping regression predictions within the training labels' range (`Target.low`/`high`, `lolscan train`'s
default since it was added) does to recorded runs: each seed's saved test predictions clamped to the training
split's label range, against the same predictions raw, with a paired bootstrap CI of the difference.

    python3 bench/clamp_replay.py ZOO/manifest.jsonl RUNS.json [RUNS.json ...] [--healthy-lr 1e-3]

RUNS are `bench/architectures.py --json` files (gzipped or not) of runs on that manifest (`test_rows` index its
rows in file order; the split is the manifest's). The clamp changes no training, early stopping or search choice,
so this is the test metric a run made with it on would have recorded.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hp_baseline import read_rows  # noqa: E402
from lolscan.evaluation.compare import kendall_tau, metric, paired_bootstrap  # noqa: E402
from lolscan.targets import Target, label_range  # noqa: E402


def _load(path: Path) -> dict:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return json.loads(raw)


def replay(rows: list[dict], saved: dict, reps: int, healthy_lr: float | None) -> list[dict]:
    """One entry per (row name, regression target) of ``saved`` with per-seed predictions."""
    if "test_rows" not in saved:  # runs saved before the test rows were recorded cannot be matched to labels
        return []
    targets = saved["targets"] if isinstance(saved["targets"], list) else [saved["targets"]]
    idx = saved["test_rows"]
    out = []
    for name, runs in saved["runs"].items():
        for t in targets:
            t = t if isinstance(t, str) else t["name"]
            preds = [np.asarray(r["pred"][t], dtype=float) for r in runs if t in r.get("pred", {})]
            if not preds or any(p.ndim != 1 for p in preds) or not all(isinstance(rows[i].get(t), (int, float)) for i in idx):
                continue
            # the range `lolscan train` records (`set_range`): the training split's labels
            lo, hi = label_range(Target(t, "regression"), [r.get(t) for r in rows if r.get("split") == "train"])
            true = np.array([float(rows[i][t]) for i in idx])
            clamped = [np.clip(p, lo, hi) for p in preds]
            d, a, b = paired_bootstrap("regression", true, clamped, preds, reps=reps)
            r2 = lambda ps: [float(metric("regression", true, p)) for p in ps]  # noqa: E731
            entry = {"row": name, "target": t, "seeds": len(preds), "range": [lo, hi],
                     "outside": int(sum(((p < lo) | (p > hi)).sum() for p in preds)), "test": len(idx),
                     "r2_raw": r2(preds), "r2_clamped": r2(clamped), "diff": d, "ci": [a, b]}
            if healthy_lr is not None:
                h = [k for k, i in enumerate(idx) if float(rows[i].get("lr", np.inf)) <= healthy_lr]
                entry["tau_raw"] = float(np.mean([kendall_tau(p[h], true[h]) for p in preds]))
                entry["tau_clamped"] = float(np.mean([kendall_tau(p[h], true[h]) for p in clamped]))
            out.append(entry)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--healthy-lr", type=float)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = read_rows(a.manifest)
    every = []
    print("| row | target | seeds | predictions outside the range | test R² raw | clamped | clamped − raw [95 % CI] |")
    print("|---|---|---|---|---|---|---|")
    for path in a.runs:
        for e in replay(rows, _load(path), a.bootstrap, a.healthy_lr):
            every.append({"file": str(path), **e})
            raw, cl = np.array(e["r2_raw"]), np.array(e["r2_clamped"])
            sd = lambda x: f" ± {x.std(ddof=1):.3f}" if len(x) > 1 else ""  # noqa: E731
            print(f"| {e['row']} | {e['target']} | {e['seeds']} | {e['outside']} of {e['seeds'] * e['test']} | "
                  f"{raw.mean():.3f}{sd(raw)} | {cl.mean():.3f}{sd(cl)} | {e['diff']:+.3f} [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}] |")
    if a.json:
        a.json.write_text(json.dumps(every, indent=1))


if __name__ == "__main__":
    sys.exit(main())
