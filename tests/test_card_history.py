"""`lolscan models NAME` shows what the checkpoints a bundled one replaced measured, whichever writer kept them:
`lolscan train --overwrite` and scripts/card_history.py (which once wrote them under another key)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from helpers import REPO

from lolscan.evaluation.metrics import format_metric

MODELS = REPO / "models"


def _models(target) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "220"}
    r = subprocess.run([sys.executable, "-m", "lolscan", "models", str(target)], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    return " ".join(r.stdout.split())


def _shown(entry: dict) -> list[str]:
    test = entry.get("test") or entry.get("test_metrics_own_split")
    return [f"{m}={format_metric(v)}" for vals in test.values() for m, v in vals.items() if m != "n"]


def test_models_shows_the_replaced_checkpoints_test_metrics_of_bundled_cards() -> None:
    for name in ("qwen2.5-coder-1.5b-data-sources", "smollm2-val-loss"):  # one written each way
        card = json.loads((MODELS / name / "card.json").read_text())
        out = _models(MODELS / name)
        assert "not recorded" not in out
        assert all(s in out for s in _shown(card["history"][-1])), name


def test_card_history_writes_the_key_lolscan_train_writes(tmp_path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(MODELS / "smollm2-data-sources", old)
    shutil.copytree(MODELS / "smollm2-val-loss", new)
    card = json.loads((new / "card.json").read_text())
    card.pop("history", None)
    (new / "card.json").write_text(json.dumps(card))
    subprocess.run([sys.executable, str(REPO / "scripts" / "card_history.py"), str(old / "card.json"), str(new / "card.json"),
                    "--note", "a test"], check=True, capture_output=True, cwd=REPO)
    entry = json.loads((new / "card.json").read_text())["history"][-1]
    assert entry["test"] == json.loads((old / "card.json").read_text())["metrics"]["test"]
    assert all(s in _models(new) for s in _shown(entry))
