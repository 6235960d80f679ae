"""Count targets (`lolscan train --count NAME=SOURCE:K`): a multilabel head trained on column SOURCE whose
reported value is K × the labels it calls present (a class-subset zoo's dataset size is 7 × its classes).

Independent truth: the same head trained as a plain multilabel target at the same seed (same loss, same
weights: its called label sets counted by hand), counts taken from the manifest's label sets, and metrics
recomputed here from the per-adapter JSON predictions."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lolscan

from lolscan.checkpoint import COUNT_SCHEMA_VERSION, CheckpointError, load_checkpoint, validate_card
from lolscan.cli.app import _register, app
from lolscan.errors import UsageError
from lolscan.evaluation.compare import metric
from lolscan.evaluation.metrics import target_metrics
from lolscan.targets import Target, make_target, split_set
from lolscan.training import write_synthetic_zoo

_register()
K = 3  # what one label is worth in these tests


# ---- the target on its own --------------------------------------------------------------------------
def test_count_target_encodes_label_sets_and_reports_k_times_the_labels_called():
    t = make_target("n", ["a|b", "c", "", "a|b|c"], count=("tags", K), units="images")
    assert (t.kind, t.labels, t.width, t.source, t.per_label, t.column) == ("count", ["a", "b", "c"], 3, "tags", 3.0, "tags")
    y, mask = t.encode(["a|c", "", None])
    assert y.tolist()[:2] == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]] and mask.tolist() == [True, True, False]
    assert t.true_values(["a|c", "", "a|b|c"]) == [2 * K, 0, 3 * K]
    p = t.scores(torch.tensor([[2.0, -1.0, 0.5]]))[0].tolist()
    d = t.decode(p)
    assert d["value"] == 2 * K and isinstance(d["value"], int) and d["labels"] == ["a", "c"]
    assert d["probabilities"] == pytest.approx(dict(zip("abc", torch.sigmoid(torch.tensor([2.0, -1.0, 0.5])).tolist())))
    assert make_target("n", ["a"], count=("tags", 0.5)).decode([0.9])["value"] == 0.5  # not whole: a float
    assert "3 images for each tags label" in t.describe()
    assert Target.from_json(json.loads(json.dumps(t.to_json()))) == t
    assert "source" not in make_target("m", ["a|b"]).to_json()  # other kinds' cards are unchanged


@pytest.mark.parametrize("kwargs, needle", [
    ({"kind": "regression", "count": ("tags", 2)}, "a count is its own kind"),
    ({"kind": "count"}, "--count n=COLUMN:PER_LABEL"),
    ({"count": ("tags", 0)}, "positive per_label"),
])
def test_count_target_refuses_what_it_cannot_be(kwargs, needle):
    with pytest.raises(UsageError, match=needle.replace("(", r"\(")):
        make_target("n", ["a|b", "c"], **kwargs)


def test_a_count_of_a_numeric_column_is_refused():
    with pytest.raises(UsageError, match="column 'size' holds numbers, not label sets"):
        make_target("n", [7, 14, "21", None], count=("size", 7))


def test_count_metrics_against_counts_by_hand():
    rng = np.random.default_rng(0)
    t = make_target("n", ["a|b|c|d"], count=("tags", K))
    truth = (rng.random((200, 4)) < 0.5).astype(float)
    probs = 0.35 * truth + 0.6 * rng.random((200, 4))  # some calls wrong either way
    called, present = (probs >= 0.5).sum(1), truth.sum(1)
    m = target_metrics(t, torch.tensor(probs), torch.tensor(truth), torch.ones(200, dtype=torch.bool))
    assert m["accuracy"] == pytest.approx(float(np.mean(called == present)))
    assert m["within_one_label"] == pytest.approx(float(np.mean(np.abs(called - present) <= 1)))
    assert m["mae"] == pytest.approx(K * float(np.mean(np.abs(called - present))))
    assert m["mean_accuracy"] == pytest.approx(float(np.mean((probs >= 0.5) == (truth > 0.5))))
    assert 0.2 < m["accuracy"] < 0.9  # neither side of the test is trivial
    assert metric("count", truth, probs) == pytest.approx(m["accuracy"])
    boots = rng.integers(0, 200, (5, 200))
    assert metric("count", truth, probs, boots) == pytest.approx([float(np.mean(called[b] == present[b])) for b in boots])


# ---- trained, saved, predicted, evaluated -------------------------------------------------------------
def _train(zoo: Path, out: Path, *args: str) -> None:
    r = CliRunner().invoke(app, ["train", str(zoo / "manifest.csv"), *args, "--out", str(out), "--steps", "60", "--lr", "3e-3",
                                 "--hparam", "d=4", "--hparam", "hidden=16", "--threads", "1", "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(zoo, the count checkpoint, the same head trained as multilabel `big`)."""
    root = tmp_path_factory.mktemp("count")
    write_synthetic_zoo(root / "zoo", n=60, seed=3)
    _train(root / "zoo", root / "count", "-t", "nbig", "--count", f"nbig=big:{K}", "--units", "nbig=layers")
    _train(root / "zoo", root / "multi", "-t", "big")
    return root / "zoo", root / "count", root / "multi"


def test_count_checkpoint_is_the_multilabel_head_counted(pair):
    zoo, count, multi = pair
    card = json.loads((count / "card.json").read_text())
    assert card["schema_version"] == COUNT_SCHEMA_VERSION
    assert card["targets"][0]["kind"] == "count" and card["targets"][0]["source"] == "big"
    a, b = load_checkpoint(count), load_checkpoint(multi)
    assert a.targets[0].labels == b.targets[0].labels and a.targets[0].units == "layers"
    ads = [lolscan.load(str(p)) for p in sorted(zoo.glob("lora_*"))[:20]]
    sa, sb = a.scores(ads)["nbig"], b.scores(ads)["big"]
    assert torch.allclose(sa, sb, atol=1e-6)  # same loss, same seed: the same head
    for row_a, row_b in zip(sa.tolist(), sb.tolist()):
        da, db = a.targets[0].decode(row_a), b.targets[0].decode(row_b)
        assert da["labels"] == db["value"] and da["value"] == K * len(db["value"])
    # the card's test metrics are the count's, with the head's own label metrics beside them
    test = card["metrics"]["test"]["nbig"]
    assert {"accuracy", "mae", "within_one_label", "mean_accuracy", "auc"} <= set(test)
    assert test["mean_accuracy"] == pytest.approx(json.loads((multi / "card.json").read_text())["metrics"]["test"]["big"]["mean_accuracy"])


def test_predict_reports_the_count_and_eval_scores_it_on_the_source_column(pair, tmp_path, monkeypatch):
    zoo, count, _ = pair
    monkeypatch.setenv("LOLSCAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    big = {r["path"]: r["big"] for r in csv.DictReader((zoo / "manifest.csv").open())}
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in sorted(big)[:8]:
        shutil.copytree(zoo / name, lib / name)
    (lib / "labels.json").write_text(json.dumps({name: {"big": big[name]} for name in sorted(big)[:8]}))
    r = CliRunner().invoke(app, ["predict", str(lib), "--model", str(count), "--format", "json"])
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)["results"]
    assert len(results) == 8
    for x in results:
        pred = x["predictions"]["nbig"]
        called = [k for k, p in pred["probabilities"].items() if p >= 0.5]
        assert pred["value"] == K * len(called) and pred["labels"] == called
        assert x["truth"]["nbig"] == K * len(split_set(big[Path(x["source"]).name]))  # counted from the label set
    table = CliRunner().invoke(app, ["predict", str(lib), "--model", str(count)]).stdout
    assert "nbig [layers]" in table and "nbig (true)" in table
    csv_rows = list(csv.DictReader(io.StringIO(CliRunner().invoke(app, ["predict", str(lib), "--model", str(count), "-f", "csv"]).stdout)))
    assert [float(c["nbig"]) for c in csv_rows] == [x["predictions"]["nbig"]["value"] for x in results]
    assert all(f"nbig.p[{lab}]" in csv_rows[0] for lab in load_checkpoint(count).targets[0].labels)
    # gates: the value (a label's probability with nbig:LABEL)
    top = max(x["predictions"]["nbig"]["value"] for x in results)
    assert CliRunner().invoke(app, ["predict", str(lib), "--model", str(count), "--fail-over", f"nbig={top - 1}"]).exit_code == 1
    assert CliRunner().invoke(app, ["predict", str(lib), "--model", str(count), "--fail-over", f"nbig={top}"]).exit_code == 0
    label = load_checkpoint(count).targets[0].labels[0]
    assert CliRunner().invoke(app, ["predict", str(lib), "--model", str(count), "--fail-over", f"nbig:{label}=1"]).exit_code == 0
    # eval: the manifest's `big` label sets are the count's truth; its accuracy is the share counted right
    every = json.loads(CliRunner().invoke(app, ["predict", str(zoo), "--model", str(count), "--format", "json"]).stdout)["results"]
    right = [x["predictions"]["nbig"]["value"] == K * len(split_set(big[Path(x["source"]).name])) for x in every]
    ev = CliRunner().invoke(app, ["eval", str(zoo / "manifest.csv"), "--model", str(count), "--split", "all", "--format", "json"])
    assert ev.exit_code == 0, ev.output
    m = json.loads(ev.stdout)["metrics"]["nbig"]
    assert len(every) == m["n"] == 60 and m["accuracy"] == pytest.approx(sum(right) / 60)


def test_card_with_a_count_validates_its_slice(pair):
    card = json.loads((pair[1] / "card.json").read_text())
    validate_card(card, Path("card.json"))
    t = card["targets"][0]
    with pytest.raises(CheckpointError, match="inconsistent output slice"):
        validate_card(card | {"targets": [t | {"labels": t["labels"][:-1]}]}, Path("card.json"))
    with pytest.raises(CheckpointError, match="count needs a source"):
        validate_card(card | {"targets": [t | {"source": ""}]}, Path("card.json"))
    with pytest.raises(CheckpointError, match="a count needs 4"):  # written as an older card, it would be misread
        validate_card(card | {"schema_version": 3}, Path("card.json"))
    with pytest.raises(CheckpointError, match="newer than this lolscan"):  # what an older lolscan says, one version on
        validate_card(card | {"schema_version": COUNT_SCHEMA_VERSION + 1}, Path("card.json"))


def test_the_recipe_baseline_of_a_count_predicts_the_number_of_labels():
    """The hyperparameter-only rows of a count guess the number itself: from a recipe column that fixes it they
    are right; counting per-label guesses instead would be near chance with every label at its prior."""
    pytest.importorskip("sklearn")
    from lolscan.evaluation.compare import fit_hp_baseline

    rng = np.random.default_rng(1)
    y = (rng.random((400, 3)) < 0.5).astype(float)
    n = y.sum(1)
    X = np.column_stack([np.log10(1e-4 * (1 + n)), rng.random(400)])  # lr fixed by the count, and noise
    preds = fit_hp_baseline("count", X[:300], y[:300], X[300:], ["lr", "noise"])
    assert set(preds) == {"ridge", "gbt"} and all(p.shape == (100,) for p in preds.values())
    assert metric("count", y[300:], preds["gbt"]) == 1.0
    assert metric("count", y[300:], preds["ridge"]) > 0.5
    assert metric("count", y[300:], np.full(100, 2.4)) == pytest.approx(float(np.mean(n[300:] == 2)))  # rounded
    # as the architecture tables score them (`lolscan train`'s hp- columns): the count is the guessed number
    from lolscan.training_run import torch_scores

    t = make_target("n", ["a|b|c"], count=("tags", K))
    for p in preds.values():
        m = target_metrics(t, torch_scores(t, p), torch.tensor(y[300:]), torch.ones(100, dtype=torch.bool))
        assert m["accuracy"] == pytest.approx(metric("count", y[300:], p))
        assert m["mae"] == pytest.approx(K * float(np.mean(np.abs(np.clip(np.rint(p), 0, 3) - n[300:]))))


def test_a_counts_truth_is_its_own_number_else_its_source_counted():
    from lolscan.scan.scoring import fill_truth

    t = make_target("n", ["a|b|c"], count=("tags", K))
    for labels, want in (({"n": "21"}, 21), ({"n": 10.5}, 10.5), ({"tags": "a|c"}, 2 * K), ({"tags": ["a"], "n": 4}, 4), ({}, None)):
        row = {"truth": {}}
        fill_truth(row, [t], labels)
        assert row["truth"].get("n") == want, labels


@pytest.mark.parametrize("spec, want", [("classes:7", ("classes", 7.0)), (" classes ", ("classes", 1.0)), ("c:0.5", ("c", 0.5))])
def test_count_specs_parse(spec, want):
    from lolscan.targets import parse_count

    assert parse_count("n", spec) == want


@pytest.mark.parametrize("spec", ["", ":7", "classes:0", "classes:x", "classes:inf", "classes:-2"])
def test_bad_count_specs_are_refused_in_one_line_by_train(spec, tmp_path):
    from lolscan.targets import parse_count

    with pytest.raises(UsageError, match="expected NAME=COLUMN"):
        parse_count("n", spec)
    r = CliRunner().invoke(app, ["train", str(tmp_path / "m.csv"), "-t", "n", "--count", f"n={spec}", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "expected NAME=COLUMN" in " ".join(r.output.replace("│", " ").split())
