"""Targets (kind inference, encoding, decoding), metrics against independent formulas, manifests and splits."""
from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch

from lolscan.errors import InputError, UsageError
from lolscan.manifest import assign_splits, read_manifest
from lolscan.evaluation.metrics import auc, kendall_tau, r2, target_metrics
from lolscan.targets import fit_normalisation, infer_kind, layout, make_target


# ---- kind inference ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values, kind",
    [
        (["0.5", "1.25", "3"], "regression"),
        ([0.5, 2.0, 7.0], "regression"),
        (["1", "2", "5", "3"], "regression"),  # integers other than 0/1 are numbers
        (["0", "1", "1", ""], "binary"),
        ([0, 1, 1], "binary"),
        ([True, False], "binary"),
        (["true", "False", "yes"], "binary"),
        (["anime|photo", "photo", ""], "multilabel"),
        ([["a", "b"], ["b"], []], "multilabel"),
        (["cat", "dog", "cat", "bird"], "multiclass"),
    ],
)
def test_infer_kind(values, kind):
    assert infer_kind("col", values) == kind


def test_infer_kind_refuses_free_text_and_empty_columns():
    with pytest.raises(UsageError, match="--kind"):
        infer_kind("caption", [f"text {i}" for i in range(100)])
    with pytest.raises(UsageError, match="no values"):
        infer_kind("x", ["", None])


def test_regression_standardised_round_trip():
    t = make_target("score", ["1", "2", "3", "", "6"])
    fit_normalisation(t, ["1", "2", "3", "", "6"])
    xs = [1.0, 2.0, 3.0, 6.0]
    mean = sum(xs) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / 3)
    assert t.mean == pytest.approx(mean) and t.std == pytest.approx(std)
    y, mask = t.encode(["1", "2", "3", "", "6"])
    assert mask.tolist() == [True, True, True, False, True]
    assert y[mask, 0].tolist() == pytest.approx([(x - mean) / std for x in xs], rel=1e-6)
    assert t.scores(y)[:, 0][mask].tolist() == pytest.approx(xs, rel=1e-6)  # outputs decode back to units
    assert t.decode([4.5]) == {"value": 4.5}


def test_classification_encodings_and_layout():
    b = make_target("nsfw", ["yes", "no", "no"])
    mc = make_target("style", ["photo", "anime", "sketch", "anime"])
    ml = make_target("tags", ["a|b", "c", ""])
    assert layout([b, mc, ml]) == 1 + 3 + 3
    assert (b.out_slice, mc.out_slice, ml.out_slice) == (slice(0, 1), slice(1, 4), slice(4, 7))
    assert b.encode(["yes", "no"])[0][:, 0].tolist() == [1.0, 0.0]
    assert mc.labels == ["anime", "photo", "sketch"]
    assert mc.encode(["sketch"])[0].tolist() == [[2.0]]
    y, mask = ml.encode(["a|c", "", None])
    assert y.tolist()[0] == [1.0, 0.0, 1.0] and y.tolist()[1] == [0.0, 0.0, 0.0]
    assert mask.tolist() == [True, True, False]  # '' = no labels (labelled), None = missing
    with pytest.raises(UsageError, match="not seen in training"):
        mc.encode(["oil"])
    out = torch.tensor([[2.0, 0.1, 3.0, -1.0, 5.0, -5.0, 0.2]])
    d = mc.decode(mc.scores(out)[0].tolist())
    assert d["value"] == "photo" and sum(d["probabilities"].values()) == pytest.approx(1.0)
    assert b.decode(b.scores(out)[0].tolist())["value"] == "1"
    assert ml.decode(ml.scores(out)[0].tolist())["value"] == ["a", "c"]


def test_binary_string_labels_and_loss_masks_missing():
    b = make_target("kind", ["cat", "dog", "cat"], kind="binary")
    assert b.labels == ["cat", "dog"]
    y, mask = b.encode(["dog", None, "cat"])
    out = torch.tensor([[5.0], [100.0], [-5.0]])
    # the missing row's huge logit must not count
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([5.0, -5.0]), torch.tensor([1.0, 0.0]))
    assert float(b.loss(out, y, mask)) == pytest.approx(float(expected))
    with pytest.raises(UsageError, match="binary needs two values"):
        make_target("k", ["a", "b", "c"], kind="binary")


# ---- metrics against brute force --------------------------------------------------------------
def _kendall_brute(x, y):
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sx, sy = (x[i] > x[j]) - (x[i] < x[j]), (y[i] > y[j]) - (y[i] < y[j])
        tx += sx == 0
        ty += sy == 0
        c += sx * sy > 0
        d += sx * sy < 0
    n0 = len(x) * (len(x) - 1) / 2
    return (c - d) / math.sqrt((n0 - tx) * (n0 - ty))


def _auc_brute(s, y):
    pos = [a for a, b in zip(s, y) if b]
    neg = [a for a, b in zip(s, y) if not b]
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


def test_metrics_match_brute_force_definitions():
    rng = random.Random(3)
    x = [rng.choice([0.0, 1.0, 2.0, 3.5]) for _ in range(40)]  # ties on purpose
    y = [v + rng.gauss(0, 1.5) for v in x]
    y[5] = y[6]
    assert kendall_tau(torch.tensor(x), torch.tensor(y)) == pytest.approx(_kendall_brute(x, y))
    labels = [rng.random() < 0.4 for _ in range(40)]
    scores = [round(rng.random(), 1) for _ in range(40)]  # ties
    assert auc(torch.tensor(scores), torch.tensor(labels, dtype=torch.float)) == pytest.approx(_auc_brute(scores, labels))
    t = torch.tensor(y)
    assert r2(t, t) == 1.0 and r2(torch.full_like(t, float(t.mean())), t) == pytest.approx(0.0, abs=1e-12)


def test_target_metrics_per_kind():
    t = make_target("s", [1.0, 2.0, 3.0, 4.0])
    fit_normalisation(t, [1.0, 2.0, 3.0, 4.0])
    y, mask = t.encode([1.0, 2.0, 3.0, 4.0])
    pred = torch.tensor([[1.0], [2.0], [3.0], [5.0]])
    m = target_metrics(t, pred, y, mask)
    assert m["mse"] == pytest.approx(0.25) and m["kendall_tau"] == pytest.approx(1.0)
    assert m["r2"] == pytest.approx(1 - 1.0 / 5.0)
    mc = make_target("c", ["a", "b", "c"], kind="multiclass")
    y, mask = mc.encode(["a", "b", "c", "c"])
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.1, 0.1, 0.8]])
    m = target_metrics(mc, probs, y, mask)
    assert m["accuracy"] == 0.75 and m["n"] == 4
    ml = make_target("m", ["x|y", "x", ""])
    y, mask = ml.encode(["x|y", "x", ""])
    m = target_metrics(ml, torch.tensor([[0.9, 0.9], [0.9, 0.6], [0.1, 0.1]]), y, mask)
    assert m["mean_accuracy"] == pytest.approx(5 / 6) and m["exact_match"] == pytest.approx(2 / 3)


# ---- manifests and splits ---------------------------------------------------------------------
def test_csv_and_jsonl_manifests_resolve_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.csv").write_text("path,score,split\na.safetensors,1.5,train\n/abs/b.safetensors,2,test\n")
    m = read_manifest(tmp_path / "sub" / "m.csv")
    assert m.rows[0].source == str((tmp_path / "sub" / "a.safetensors").resolve())
    assert m.rows[1].source == "/abs/b.safetensors" and m.rows[1].split == "test"
    assert m.label_columns == ["score"]
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"uri": "hf://org/repo", "tags": ["a", "b"]}) + "\n\n" + json.dumps({"path": "x", "tags": []}) + "\n"
    )
    m = read_manifest(tmp_path / "m.jsonl")
    assert [r.source for r in m.rows] == ["hf://org/repo", str((tmp_path / "x").resolve())]
    assert m.column("tags") == [["a", "b"], []]


@pytest.mark.parametrize(
    "text, match",
    [
        ("name,score\na,1\n", "'path' or 'uri'"),
        ("path,split\na,training2\n", "split"),
        ('{"path": "a"}\nnot json\n', "line 2"),
        ("", "no rows"),
    ],
)
def test_bad_manifests_give_one_line_errors(tmp_path, text, match):
    p = tmp_path / ("m.jsonl" if text.startswith("{") else "m.csv")
    p.write_text(text)
    with pytest.raises(InputError, match=match) as exc:
        read_manifest(p)
    assert "\n" not in str(exc.value) and str(p) in str(exc.value)


def test_group_aware_split_is_seeded_and_never_leaks(tmp_path):
    lines = ["path,y,group"] + [f"a{i}.safetensors,{i},subject{i // 4}" for i in range(120)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    m = read_manifest(tmp_path / "m.csv")
    s1 = assign_splits(m, seed=7)
    assert s1 == assign_splits(m, seed=7)
    assert s1 != assign_splits(m, seed=8)
    groups = {name: {m.rows[i].group for i in idx} for name, idx in s1.items()}
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["val"]) and not (groups["val"] & groups["test"])
    assert sorted(i for idx in s1.values() for i in idx) == list(range(120))
    assert 12 <= len(s1["test"]) <= 24 and 12 <= len(s1["val"]) <= 24


def test_split_column_is_respected_and_val_carved_from_train(tmp_path):
    lines = ["path,y,split"] + [f"a{i},{i},{'test' if i < 10 else 'train'}" for i in range(60)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    s = assign_splits(read_manifest(tmp_path / "m.csv"), seed=0)
    assert s["test"] == list(range(10))
    assert s["val"] and not set(s["val"]) & set(range(10)) and sorted(s["train"] + s["val"]) == list(range(10, 60))
