"""Carry a bundled checkpoint's earlier figures into the card of the checkpoint that replaces it.

    python3 scripts/card_history.py OLD/card.json NEW/card.json --note "why it was replaced" [--eval EVAL.json]

NEW/card.json gains ``history``: OLD's own history followed by one entry for OLD (what it was, what it was
trained on, its test figures as its card recorded them and, with ``--eval``, as `lolscan eval --format json`
measured it on NEW's test split), and keeps OLD's ``default`` flag. Only card.json is touched.
"""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path


def summary(card: dict) -> dict:
    data = card.get("training_data") or {}
    return {
        "name": card.get("name"),
        "lolscan_version": card.get("lolscan_version"),
        "architecture": card.get("architecture"),
        "hparams": card.get("hparams"),
        "description": card.get("description", ""),
        "training_data": {k: data.get(k) for k in ("manifest_sha256", "adapters", "splits") if k in data},
        "training": {k: (card.get("training") or {}).get(k) for k in ("seed", "steps", "best_step", "lr")},
        "test": (card.get("metrics") or {}).get("test"),  # its own split's, under the key `lolscan train --overwrite` uses
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--note", required=True, help="why the new checkpoint replaced the old one")
    ap.add_argument("--eval", type=Path, help="`lolscan eval --format json` of OLD on NEW's test split")
    a = ap.parse_args(argv)
    old, new = json.loads(a.old.read_text()), json.loads(a.new.read_text())
    entry = summary(old) | {"replaced": datetime.date.today().isoformat(), "note": a.note}
    if a.eval:
        ev = json.loads(a.eval.read_text())
        entry["test_metrics_new_split"] = {"manifest": Path(ev.get("manifest", "")).name, "adapters": ev.get("adapters"),
                                           "metrics": ev.get("metrics")}
    new["history"] = list(old.get("history") or []) + [entry]
    if old.get("default"):
        new["default"] = True
    a.new.write_text(json.dumps(new, indent=1) + "\n")
    print(f"{a.new}: history has {len(new['history'])} entr{'y' if len(new['history']) == 1 else 'ies'}")


if __name__ == "__main__":
    main()
