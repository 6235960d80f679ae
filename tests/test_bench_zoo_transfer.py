"""bench/zoo_transfer.py against figures computed by hand from a small manifest and prediction file."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import load_script


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _pred(path, preds):
    return {"schema_version": 1, "source": f"/somewhere/zoo/{path}", "status": "ok", "predictions": preds}


def test_multilabel_accuracy_and_auc(tmp_path):
    rows = [{"id": f"a{i}", "path": f"adapters/a{i}/w.safetensors", "classes": c}
            for i, c in enumerate([["x"], ["x", "y"], [], ["y"]])]
    probs = [{"x": 0.9, "y": 0.2}, {"x": 0.4, "y": 0.8}, {"x": 0.1, "y": 0.6}, {"x": 0.3, "y": 0.7}]
    preds = [_pred(r["path"], {"classes": {"value": [], "probabilities": p}}) for r, p in zip(rows, probs)]
    preds.append({"source": "/elsewhere/not-in-zoo.safetensors", "status": "ok", "predictions": {"classes": {}}})
    _write(tmp_path / "m.jsonl", rows)
    _write(tmp_path / "p.jsonl", preds)
    out = load_script("bench/zoo_transfer.py").main([str(tmp_path / "m.jsonl"), str(tmp_path / "p.jsonl"),
                                                    "--target", "classes", "--bootstrap", "200"])
    # per adapter, labels right at 0.5: a0 2/2, a1 1/2 (x at 0.4), a2 1/2 (y at 0.6), a3 2/2
    assert out["n"] == 4 and out["value"] == pytest.approx(0.75)
    # positives x@a0 .9, x@a1 .4, y@a1 .8, y@a3 .7; negatives y@a0 .2, x@a2 .1, y@a2 .6, x@a3 .3: all pairs ordered but (.4, .6): 15 of 16
    assert out["auc"] == pytest.approx(15 / 16)
    assert out["ci95"][0] <= 0.75 <= out["ci95"][1]


def test_regression_r2(tmp_path):
    rng = np.random.default_rng(0)
    t = rng.normal(size=50)
    p = t + 0.5 * rng.normal(size=50)
    rows = [{"id": f"a{i}", "path": f"adapters/a{i}/w.safetensors", "y": float(v)} for i, v in enumerate(t)]
    _write(tmp_path / "m.jsonl", rows)
    _write(tmp_path / "p.jsonl", [_pred(r["path"], {"y": {"value": float(v)}}) for r, v in zip(rows, p)])
    out = load_script("bench/zoo_transfer.py").main([str(tmp_path / "m.jsonl"), str(tmp_path / "p.jsonl"),
                                                    "--target", "y", "--bootstrap", "100"])
    assert out["metric"] == "R²" and out["value"] == pytest.approx(1 - ((t - p) ** 2).sum() / ((t - t.mean()) ** 2).sum())
    with pytest.raises(SystemExit):
        load_script("bench/zoo_transfer.py").main([str(tmp_path / "m.jsonl"), str(tmp_path / "p.jsonl"), "--target", "z"])
