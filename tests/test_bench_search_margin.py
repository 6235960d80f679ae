"""bench/search_margin.py replays a recorded search as lolscan's own `_keeps` decides it (margin only)."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lolscan.training import search

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import search_margin  # noqa: E402


def _tried(spectra: float, raw: float, asinh: float) -> list[dict]:
    return [{"products": False, "lr": 1e-3, "val_loss": spectra},
            {"products": True, "squash": "none", "lr": 1e-3, "val_loss": raw},
            {"products": True, "squash": "asinh", "lr": 1e-3, "val_loss": asinh},
            {"products": True, "squash": "none", "lr": 3e-4, "val_loss": 0.01}]  # another lr: not a settings choice


@pytest.mark.parametrize("margin", [0.1, 0.2])
@pytest.mark.parametrize("losses", [(1.0, 0.85, 0.86), (1.0, 0.7, 0.65), (1.0, 0.95, 0.5), (1.0, 1.2, 0.89)])
def test_replay_matches_the_search_rule(margin, losses, monkeypatch):
    monkeypatch.setattr(search, "SEARCH_MARGIN", margin)
    kept, kept_loss = {"products": False}, losses[0]
    for cand, loss in zip(_tried(*losses)[1:3], losses[1:]):
        settings = {k: v for k, v in cand.items() if k not in ("lr", "val_loss")}
        if search._keeps(loss, kept_loss, settings, kept):
            kept, kept_loss = settings, loss
    assert search_margin.choose(_tried(*losses), margin, 1e-3) == kept


def test_lists_the_runs_a_smaller_margin_changes(tmp_path):
    runs = {"glnet": [{"seed": 0, "chosen": {"products": False}, "tried": _tried(1.0, 0.85, 0.88),
                       "test": {"y": {"r2": 0.4}}},
                      {"seed": 1, "chosen": {"products": True, "squash": "none"}, "tried": _tried(1.0, 0.7, 0.75),
                       "test": {"y": {"r2": 0.6}}}]}
    with gzip.open(tmp_path / "row.json.gz", "wt") as f:
        json.dump({"runs": runs}, f)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "search_margin.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "2 recorded searches; 1 choose otherwise at margin 0.1 than at 0.2" in out
    assert "seed 0" in out and "seed 1" not in out and "0.600 over 1" in out


def test_reads_the_search_a_checkpoint_card_records(tmp_path):
    card = {"training": {"seed": 0, "search": _tried(1.0, 0.85, 0.88)}}
    (tmp_path / "my-ckpt").mkdir()
    (tmp_path / "my-ckpt" / "card.json").write_text(json.dumps(card))
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "search_margin.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "1 recorded searches; 1 choose otherwise" in out and "my-ckpt" in out
