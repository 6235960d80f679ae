"""Replay the GL-net settings search of recorded runs at another margin.

Every `bench/architectures.py --json` run records the candidates its search tried (``tried``: settings, lr and
validation loss). This replays the choice among the candidates tried at the default lr with
`lolscan.training.search._keeps` itself, at two margins, and lists the runs whose choice differs, with the
test metric of each run beside the mean test metric of the runs of the same row that chose the other setting.
The confidence rule (95 % of paired resamples) needs per-row losses that runs do not record, so a run listed
here is one the smaller margin *may* change: the rule can still refuse the candidate.

    python3 bench/search_margin.py bench/history/results bench/results --margins 0.2 0.1
    python3 bench/search_margin.py models          # the searches recorded in checkpoint cards
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

def _load(path: Path) -> Any:
    try:
        with (gzip.open(path, "rt") if path.suffix == ".gz" else path.open()) as f:
            return json.load(f)
    except (OSError, ValueError, EOFError):
        return None


def choose(tried: list[dict[str, Any]], margin: float, lr: float) -> dict[str, Any] | None:
    """The settings kept among the candidates tried at ``lr`` (the search's order), at ``margin``."""
    from lolscan.training.search import _keeps

    kept: dict[str, Any] | None = None
    kept_loss: float | None = None
    for cand in tried:
        if abs(cand.get("lr", lr) - lr) > 1e-12 or "val_loss" not in cand:
            continue
        settings = {k: v for k, v in cand.items() if k not in ("lr", "val_loss")}
        if _keeps(cand["val_loss"], kept_loss, settings, kept, margin=margin):
            kept, kept_loss = settings, cand["val_loss"]
    return kept


def _test_metric(run: dict[str, Any]) -> float | None:
    for m in run.get("test", {}).values():
        if isinstance(m, dict):
            for key in ("r2", "mean_accuracy", "accuracy"):
                if key in m:
                    return float(m[key])
    return None


def _key(settings: dict[str, Any] | None) -> str:
    """The settings that cost complexity (`SEARCH_FREE` and the lr left out), as comparable text."""
    from lolscan.training.search import SEARCH_FREE

    return json.dumps({k: v for k, v in (settings or {}).items() if k not in SEARCH_FREE and k != "lr"}, sort_keys=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="folders searched for *.json and *.json.gz runs")
    ap.add_argument("--margins", nargs=2, type=float, default=(0.2, 0.1), metavar=("OLD", "NEW"))
    ap.add_argument("--lr", type=float, default=1e-3, help="the lr the settings are chosen at (DEFAULT_LR)")
    a = ap.parse_args()
    old, new = a.margins
    searched = 0
    changed: list[str] = []
    for folder in a.folders:
        for path in sorted(p for p in folder.rglob("*") if p.name.endswith((".json", ".json.gz"))):
            d = _load(path)
            if isinstance(d, dict) and isinstance(d.get("training"), dict):  # a checkpoint's card.json
                search = d["training"].get("search")
                tried = search if isinstance(search, list) else None
                d = {"runs": {path.parent.name: [{"seed": d["training"].get("seed"), "tried": tried}]}} if tried else None
            if not isinstance(d, dict) or not isinstance(d.get("runs"), dict):
                continue
            for row, runs in d["runs"].items():
                if not isinstance(runs, list):
                    continue
                runs = [r for r in runs if isinstance(r, dict) and any("products" in c for c in r.get("tried") or [])]
                by_choice: dict[str, list[float]] = {}
                for r in runs:
                    m = _test_metric(r)
                    if m is not None:
                        by_choice.setdefault(_key(r.get("chosen")), []).append(m)
                for r in runs:
                    searched += 1
                    a_, b_ = choose(r["tried"], old, a.lr), choose(r["tried"], new, a.lr)
                    if a_ is None or b_ is None or _key(a_) == _key(b_):
                        continue
                    others = by_choice.get(_key(b_), [])
                    other = f"{sum(others) / len(others):.3f} over {len(others)}" if others else "none in this row"
                    m = _test_metric(r)
                    changed.append(f"{path} {row} seed {r.get('seed')}: {_key(a_)} -> {_key(b_)}; test "
                                   f"{m if m is None else round(m, 3)} (runs of this row that chose the latter: {other})")
    print(f"{searched} recorded searches; {len(changed)} choose otherwise at margin {new} than at {old}")
    for line in changed:
        print("  " + line)


if __name__ == "__main__":
    main()
