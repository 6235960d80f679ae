"""The checkpoints shipped in models/ against the held-out example LoRAs shipped beside them."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import REPO

import lolscan
from lolscan.checkpoint import list_checkpoints, load_checkpoint
from lolscan.errors import EXIT_INCOMPATIBLE

MODELS = REPO / "models"
PAIRS = [("smollm2-val-loss", "examples", "val_loss"),
         ("qwen2.5-coder-1.5b-arc-c-accuracy", "examples-qwen", "arc_c_acc"),
         ("qwen2.5-coder-1.5b-val-loss", "examples-qwen", "val_loss")]


@pytest.mark.parametrize("name,examples,target", PAIRS)
def test_bundled_checkpoint_beats_the_training_mean_on_held_out_examples(name, examples, target):
    """On LoRAs it never saw, each shipped predictor is closer to the true labels (measured when the zoo
    was built) than always answering its training-set mean, and gets their extremes right."""
    ck = load_checkpoint(MODELS / name)
    labels = json.loads((MODELS / examples / "labels.json").read_text())
    ids = sorted(labels)
    preds = [p[target]["value"] for p in ck.predict([lolscan.load(MODELS / examples / i) for i in ids])]
    true = [labels[i][target] for i in ids]
    assert all(torch.isfinite(torch.tensor(preds)))
    mean = next(t for t in ck.card["targets"] if t["name"] == target)["mean"]
    mse = sum((p - t) ** 2 for p, t in zip(preds, true)) / len(ids)
    baseline = sum((mean - t) ** 2 for t in true) / len(ids)
    assert mse < 0.5 * baseline, (preds, true, mean)
    assert preds.index(max(preds)) == true.index(max(true)) or preds.index(min(preds)) == true.index(min(true))


def test_checkpoints_refuse_the_other_base_models_loras():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for model, examples in (("smollm2-val-loss", "examples-qwen"), ("qwen2.5-coder-1.5b-arc-c-accuracy", "examples")):
        r = subprocess.run([sys.executable, "-m", "lolscan", "predict", str(MODELS / examples), "--model", model,
                            "--format", "json"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        assert r.returncode == EXIT_INCOMPATIBLE, r.stderr
        rows = json.loads(r.stdout)["results"]
        assert rows and all(x["status"] == "incompatible" for x in rows)


def test_models_lists_the_bundled_checkpoints():
    names = {c["name"] for c in list_checkpoints()}
    assert {"smollm2-val-loss", "smollm2-data-sources", "qwen2.5-coder-1.5b-arc-c-accuracy",
            "qwen2.5-coder-1.5b-val-loss"} <= names
