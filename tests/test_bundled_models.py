"""The checkpoints shipped in models/ against the held-out example LoRAs shipped beside them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO

import lolscan
from lolscan.checkpoint import list_checkpoints, load_checkpoint
from lolscan.errors import EXIT_INCOMPATIBLE
from lolscan.evaluation.metrics import kendall_tau

MODELS = REPO / "models"
PAIRS = [("smollm2-val-loss", "examples", "val_loss", "mse"),
         ("qwen2.5-coder-1.5b-arc-c-accuracy", "examples-qwen-v3", "arc_c_acc", "mse"),
         # Heavy-tailed target: one damaged example LoRA (lora-01224, ARC-C 0.24, true 2.39) is predicted at 2.9,
         # and on four examples that one square outweighs the rest; the checkpoint orders all four correctly.
         ("qwen2.5-coder-1.5b-val-loss", "examples-qwen-v3", "val_loss", "order"),
         ("inhouse-mix-clip-score", "examples-mix", "clip_score", "mse")]


@pytest.mark.parametrize("name,examples,target,check", PAIRS)
def test_bundled_checkpoint_beats_the_training_mean_on_held_out_examples(name, examples, target, check):
    """On LoRAs it never saw, each shipped predictor gets the extremes of the true labels (measured when the
    zoo was built) right, and either is closer to them than always answering its training-set mean
    (``mse``) or orders them like the labels (``order``: Kendall tau above 0.6, at most one pair swapped)."""
    ck = load_checkpoint(MODELS / name)
    labels = json.loads((MODELS / examples / "labels.json").read_text())
    ids = sorted(i for i in labels if target in labels[i])  # examples-mix: each kind of LoRA has its own targets
    preds = [p[target]["value"] for p in ck.predict([lolscan.load(MODELS / examples / i) for i in ids])]
    true = [labels[i][target] for i in ids]
    assert all(torch.isfinite(torch.tensor(preds)))
    mean = next(t for t in ck.card["targets"] if t["name"] == target)["mean"]
    mse = sum((p - t) ** 2 for p, t in zip(preds, true)) / len(ids)
    baseline = sum((mean - t) ** 2 for t in true) / len(ids)
    if check == "mse":
        assert mse < 0.5 * baseline, (preds, true, mean)
    else:
        assert kendall_tau(torch.tensor(preds), torch.tensor(true)) > 0.6, (preds, true)
    assert preds.index(max(preds)) == true.index(max(true)) or preds.index(min(preds)) == true.index(min(true))


def test_sources_checkpoint_reads_membership_of_held_out_v3_loras():
    """The data-sources checkpoint on the four v3 test LoRAs (chosen by ARC-C percentile, not by this checkpoint):
    at least 60 % of the 48 source-membership calls right (chance 50 %; its test split: 0.77), and present sources
    get a higher mean probability than absent ones."""
    ex = MODELS / "examples-qwen-v3"
    labels = json.loads((ex / "labels.json").read_text())
    ids = sorted(labels)
    preds = load_checkpoint(MODELS / "qwen2.5-coder-1.5b-data-sources").predict([lolscan.load(ex / i) for i in ids])
    present, absent, right = [], [], 0
    for i, p in zip(ids, preds):
        probs = p["sources"]["probabilities"]
        assert set(probs) >= set(labels[i]["sources"])
        for source, q in probs.items():
            truth = source in labels[i]["sources"]
            (present if truth else absent).append(q)
            right += (q >= 0.5) == truth
    assert right / (len(present) + len(absent)) >= 0.6, right
    assert sum(present) / len(present) > sum(absent) / len(absent)


def test_checkpoints_refuse_the_other_base_models_loras():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for model, examples in (("smollm2-val-loss", "examples-qwen"), ("qwen2.5-coder-1.5b-arc-c-accuracy", "examples"),
                            ("inhouse-mix-attributes", "examples-fashion"), ("inhouse-fashion-classes", "examples-mix")):
        r = subprocess.run([sys.executable, "-m", "lolscan", "predict", str(MODELS / examples), "--model", model,
                            "--format", "json"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        assert r.returncode == EXIT_INCOMPATIBLE, r.stderr
        rows = json.loads(r.stdout)["results"]
        assert rows and all(x["status"] == "incompatible" for x in rows)


def test_mix_checkpoints_read_each_examples_classes_and_font():
    """The six held-out LoRAs of the mix base: the attributes of the font each font LoRA was personalised to
    (read from the font file when the zoo was built) are what the shipped attributes checkpoint predicts; the
    classes checkpoint gets at least 80 % of the class-subset LoRAs' present/absent calls right, more than
    the better of always-absent and always-present for each LoRA adds up to; and predict without --model picks all four mix checkpoints for them
    (and no fashion-base one: another base's module shapes)."""
    labels = json.loads((MODELS / "examples-mix" / "labels.json").read_text())
    fonts = sorted(i for i in labels if "attributes" in labels[i])
    kinds = sorted(i for i in labels if "classes" in labels[i])
    assert len(fonts) == 2 and len(kinds) == 4
    preds = load_checkpoint(MODELS / "inhouse-mix-attributes").predict([lolscan.load(MODELS / "examples-mix" / i) for i in fonts])
    assert [sorted(p["attributes"]["value"]) for p in preds] == [sorted(labels[i]["attributes"]) for i in fonts]
    ck = load_checkpoint(MODELS / "inhouse-mix-classes")
    names = next(t for t in ck.card["targets"] if t["name"] == "classes")["labels"]
    right = trivial = 0
    for i, p in zip(kinds, ck.predict([lolscan.load(MODELS / "examples-mix" / i) for i in kinds])):
        true, said = set(labels[i]["classes"]), set(p["classes"]["value"])
        right += sum((c in said) == (c in true) for c in names)
        trivial += max(len(true), len(names) - len(true))
    assert right >= 0.8 * len(names) * len(kinds) and right > trivial, (right, trivial)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "lolscan", "predict", str(MODELS / "examples-mix"), "--format", "json"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["results"]
    assert len(rows) == 6 and all(x["models"] == {"attributes": "inhouse-mix-attributes", "classes": "inhouse-mix-classes",
                                                  "clip_score": "inhouse-mix-clip-score",
                                                  "dataset_size": "inhouse-mix-dataset-size"} for x in rows)
    # the dataset size is 7 images for each class the classes checkpoint calls (the same members), and each row
    # carries the labels of labels.json beside the adapter folders (diffusers files sit one level down)
    for x in rows:
        name = Path(x["source"]).parent.name
        assert x["predictions"]["dataset_size"]["value"] == 7 * len(x["predictions"]["classes"]["value"])
        assert x["predictions"]["dataset_size"]["labels"] == x["predictions"]["classes"]["value"]
        known = {k: sorted(v) if isinstance(v, list) else v for k, v in labels[name].items() if k in x["predictions"]}
        assert known and {k: sorted(v) if isinstance(v, list) else v for k, v in x["truth"].items()} == known, name
    assert sum(x["predictions"]["dataset_size"]["value"] == labels[Path(x["source"]).parent.name].get("dataset_size")
               for x in rows) >= 3  # of the four class-subset LoRAs


def test_models_lists_the_bundled_checkpoints():
    names = {c["name"] for c in list_checkpoints()}
    assert {"smollm2-val-loss", "smollm2-data-sources", "qwen2.5-coder-1.5b-arc-c-accuracy",
            "qwen2.5-coder-1.5b-val-loss"} <= names


@pytest.mark.parametrize("name", ["qwen2.5-coder-1.5b-arc-c-accuracy", "qwen2.5-coder-1.5b-val-loss",
                                  "qwen2.5-coder-1.5b-data-sources"])
def test_shipped_qwen_checkpoints_see_the_update_not_its_factorisation(name):
    """The same ΔW written as (U R, V R⁻ᵀ) with a random invertible R, or with extra all-zero rank columns in
    some modules (a rank-8 file of the same update), gets the same prediction as the original file."""
    from dataclasses import replace

    from lolscan.adapter import Adapter

    ck = load_checkpoint(MODELS / name)
    ex = MODELS / "examples-qwen"
    adapters = [lolscan.load(ex / i) for i in sorted(json.loads((ex / "labels.json").read_text()))]
    g = torch.Generator().manual_seed(5)

    def refactor(a: Adapter, i: int) -> Adapter:
        layers = {}
        for j, (key, layer) in enumerate(a.layers.items()):
            u, v = layer.U.double(), layer.V.double()
            r = torch.randn(layer.rank, layer.rank, generator=g, dtype=torch.float64) + 2 * torch.eye(layer.rank)
            u, v = u @ r, v @ torch.linalg.inv(r).T
            if (i + j) % 3 == 0:  # zero-pad some modules to rank 8: mixed ranks, same ΔW
                u, v = (torch.nn.functional.pad(t, (0, 4)) for t in (u, v))
            layers[key] = replace(layer, U=u.float(), V=v.float())
        return replace(a, layers=layers)

    changed = [refactor(a, i) for i, a in enumerate(adapters)]
    assert any(a.mixed_rank for a in changed)
    for before, after in zip(ck.predict(adapters), ck.predict(changed)):
        for target, p in before.items():
            q = after[target]
            if "probabilities" in p:
                got, want = list(q["probabilities"].values()), list(p["probabilities"].values())
            else:
                got, want = [q["value"]], [p["value"]]
            assert torch.allclose(torch.tensor(got), torch.tensor(want), rtol=1e-3, atol=1e-3), (target, got, want)


def test_every_bundled_file_is_within_16_mib():
    """The repository's limit for one file: a checkpoint larger than that ships as shards (`--max-shard-size`);
    the class-subset classes ensemble (11 members in float16, ≈ 26 MB) is one."""
    big = [(str(p.relative_to(MODELS)), p.stat().st_size) for p in MODELS.rglob("*") if p.is_file() and p.stat().st_size > 16 * 2**20]
    assert not big, big
    shards = sorted(p.name for p in (MODELS / "inhouse-mix-classes").glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and not (MODELS / "inhouse-mix-classes" / "model.safetensors").exists()
