"""bench/hp_baseline.py without scikit-learn (as on a GPU machine that lacks it): the ridge row alone."""
from __future__ import annotations

import math
import random

from helpers import load_script

from lolscan.evaluation import compare


def test_without_sklearn_the_ridge_row_stands_alone(monkeypatch, capsys) -> None:
    rng = random.Random(1)
    rows = []
    for i in range(60):
        lr = 10 ** rng.uniform(-5, -2)
        rows.append({"id": f"l{i}", "split": "test" if i % 5 == 0 else "train", "acc": 0.5 + 0.05 * math.log10(lr),
                     "lr": lr, "steps": 16 + i % 3, "batch_size": 4, "dropout": 0.0, "weight_decay": 0.0,
                     "rank": 4, "alpha": 8, "src_a": i % 2})
    monkeypatch.setattr(compare, "gbt_available", lambda: False)
    out = load_script("bench/hp_baseline.py").fit_baselines(rows, "acc", seeds=2)
    assert list(out) == ["hp-ridge"]
    assert len(out["hp-ridge"]) == 2 and len(out["hp-ridge"][0]) == 12
    assert "scikit-learn is not installed" in capsys.readouterr().err
