"""`train` tries the log transform for positive, heavy-tailed regression targets and keeps it when
validation prefers it on a metric comparable across transforms (`_untransformed_loss`: validation MSE in
user units); other targets train exactly as before.

Truth is independent of lolscan's own metrics: the label is y = exp(3·‖ΔW₀‖_F) with ‖ΔW₀‖_F computed
here from each adapter's factors, R² and coverage are recomputed from the raw manifest values.
"""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from helpers import REPO

import lolscan
from lolscan.checkpoint import CARD_NAME, load_checkpoint
from lolscan.manifest import read_manifest
from lolscan.training import (
    LOG_TAIL_RATIO,
    TrainOptions,
    heavy_tailed,
    log_candidates,
    prepare,
    save_checkpoint,
    train,
    write_heavy_tailed_zoo,
    write_synthetic_zoo,
)

OPTS = {"arch": "glnet", "hparams": {"d": 8}, "max_steps": 300, "progress": False, "threads": 1}
C = 3.0  # y = exp(C·‖ΔW₀‖_F): ‖ΔW₀‖_F spans ≈ 0.3–3.1, so y spans ≈ 2–11,000, max/median ≈ 100


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("logzoo")
    manifest = write_synthetic_zoo(root, n=200, seed=0)
    with open(manifest) as fh:
        rows = list(csv.DictReader(fh))
    out = root / "exp.csv"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "y", "norm", "score", "planted", "group"])
        w.writeheader()
        for r in rows:
            dw = lolscan.load(str(root / r["path"]))["model.layers.0.proj"].delta().double()
            norm = float(torch.linalg.matrix_norm(dw))  # from the factors, not the zoo's own column
            w.writerow({"path": r["path"], "y": f"{math.exp(C * norm):.10g}", "norm": r["norm"], "score": r["score"],
                        "planted": r["planted"], "group": r["group"]})
    return out


@pytest.fixture(scope="module")
def runs(zoo):
    """The same data trained with the automatic choice and with the transform off."""
    out = {}
    for mode in ("auto", "none"):
        ds = prepare(read_manifest(zoo), ["y"], progress=False)
        out[mode] = ds, train(ds, TrainOptions(**OPTS, transform=mode))
    return out


def _r2_in_units(ds, result, name: str) -> float:
    true = [float(ds.values[name][i]) for i in ds.splits["test"]]
    pred = result.test_scores[name][:, 0].double().tolist()
    mean = sum(true) / len(true)
    return 1 - sum((p - t) ** 2 for p, t in zip(pred, true)) / sum((t - mean) ** 2 for t in true)


def test_heavy_tailed_label_gets_the_log_transform_and_a_better_test_r2(runs):
    ds, result = runs["auto"]
    t = ds.targets[0]
    train_y = [float(ds.values["y"][i]) for i in ds.splits["train"]]
    assert min(train_y) > 0 and heavy_tailed(train_y) and max(train_y) / sorted(train_y)[len(train_y) // 2] > LOG_TAIL_RATIO
    assert t.transform == "log" and result.chosen["transforms"] == {"y": "log"}
    logs = [e for e in result.tried if "transforms" in e]
    plain = next(e for e in result.tried if "transforms" not in e and "val_loss_untransformed" in e)
    assert len(logs) == 1 and logs[0]["val_loss_untransformed"] < plain["val_loss_untransformed"]
    assert t.mean == pytest.approx(sum(math.log(v) for v in train_y) / len(train_y))  # fitted on the logs
    plain_ds, plain_result = runs["none"]
    r2_log, r2_plain = _r2_in_units(ds, result, "y"), _r2_in_units(plain_ds, plain_result, "y")
    assert r2_log == pytest.approx(result.metrics["test"]["y"]["r2"], rel=1e-6)  # the card's R² is in user units
    assert r2_log > 0.85 and r2_log > r2_plain + 0.1  # seed 0: 0.93 against 0.57
    assert plain_ds.targets[0].transform == "none" and "transforms" not in plain_result.chosen


def test_interval_is_asymmetric_and_coverage_counts_its_rows(runs):
    ds, result = runs["auto"]
    t = ds.targets[0]
    assert t.interval is not None and t.interval > 0
    true = [float(ds.values["y"][i]) for i in ds.splits["test"]]
    inside = []
    for row, y in zip(result.test_scores["y"].tolist(), true):
        d = t.decode(row)
        lo, hi = d["interval"]
        v = d["value"]
        assert lo < v < hi and hi - v > v - lo  # multiplicative: wider above
        assert (lo, hi) == pytest.approx((math.exp(math.log(v) - t.interval), math.exp(math.log(v) + t.interval)), rel=1e-9)
        inside.append(lo <= y <= hi)
    assert result.metrics["test"]["y"]["interval_coverage"] == pytest.approx(sum(inside) / len(inside))


def test_log_checkpoint_round_trips_and_the_card_records_the_choice(runs, tmp_path):
    ds, result = runs["auto"]
    path = save_checkpoint(ds, result, tmp_path / "log", name="log")
    card = json.loads((path / CARD_NAME).read_text())
    assert card["targets"][0]["transform"] == "log"
    assert any(e.get("transforms") == {"y": "log"} for e in card["training"]["search"])
    ckpt = load_checkpoint(path)
    assert ckpt.targets[0] == ds.targets[0]
    adapters = ds.split_adapters("test")
    result.model.eval()
    with torch.no_grad():
        expected = ds.targets[0].scores(result.model(result.model.collate(adapters)))
    got = ckpt.scores(adapters)["y"]
    assert torch.equal(got, expected) and torch.allclose(got, result.test_scores["y"], rtol=1e-5)
    assert ckpt.predict(adapters) == [{"y": ds.targets[0].decode(row)} for row in expected.tolist()]


def test_a_card_without_the_field_loads_as_none(runs, tmp_path):
    ds, result = runs["none"]
    path = save_checkpoint(ds, result, tmp_path / "plain", name="plain")
    card = json.loads((path / CARD_NAME).read_text())
    assert "transform" not in card["targets"][0]  # as cards were written before the field
    ckpt = load_checkpoint(path)
    assert ckpt.targets[0].transform == "none"
    assert torch.equal(ckpt.scores(ds.split_adapters("test"))["y"], result.test_scores["y"])
    bundled = REPO / "models" / "smollm2-val-loss"  # a card written before the field existed
    assert "transform" not in json.loads((bundled / CARD_NAME).read_text())["targets"][0]
    t = load_checkpoint(bundled).targets[0]
    assert t.transform == "none"
    assert float(t.scores(torch.tensor([[0.5]]))) == pytest.approx(0.5 * t.std + t.mean)  # affine, no exp


def test_targets_that_do_not_qualify_get_no_candidate_and_train_bit_for_bit(zoo):
    """‖ΔW₀‖_F is positive but spans a factor < 5; score has negative values; planted is binary."""
    ds = prepare(read_manifest(zoo), ["norm", "score", "planted"], progress=False)
    norm = [float(ds.values["norm"][i]) for i in ds.splits["train"]]
    assert min(norm) > 0 and max(norm) / sorted(norm)[len(norm) // 2] < 5 and not heavy_tailed(norm)
    assert log_candidates(ds) == []
    opts = {**OPTS, "max_steps": 40}
    auto = train(ds, TrainOptions(**opts))
    state = {k: v.clone() for k, v in auto.model.state_dict().items()}
    targets = [t.to_json() for t in ds.targets]
    off = train(ds, TrainOptions(**opts, transform="none"))
    assert all(t.transform == "none" for t in ds.targets) and [t.to_json() for t in ds.targets] == targets
    assert auto.tried == off.tried and auto.chosen == off.chosen and "transforms" not in auto.chosen
    # the same five candidates (spectra, with summaries, with summaries + skip, raw and asinh products) and no
    # transform candidate
    assert len(auto.tried) == 5 and all("val_loss_untransformed" not in e for e in auto.tried)
    assert state.keys() == off.model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in off.model.state_dict().items())
    assert auto.metrics == off.metrics and auto.best_step == off.best_step and auto.history == off.history


def test_a_second_train_on_the_dataset_starts_untransformed(zoo):
    ds = prepare(read_manifest(zoo), ["y"], progress=False)
    train(ds, TrainOptions(**{**OPTS, "max_steps": 30}, transform="log"))
    t = ds.targets[0]
    train_y = [float(ds.values["y"][i]) for i in ds.splits["train"]]
    assert t.transform == "log" and t.mean == pytest.approx(sum(math.log(v) for v in train_y) / len(train_y))
    result = train(ds, TrainOptions(**{**OPTS, "max_steps": 30}, transform="none"))
    assert t.transform == "none" and t.mean == pytest.approx(sum(train_y) / len(train_y))
    assert "transforms" not in result.chosen


def test_transform_option_is_checked(runs):
    ds, _ = runs["none"]
    with pytest.raises(lolscan.errors.UsageError, match="transform"):
        train(ds, TrainOptions(**OPTS, transform="sqrt"))


def test_heavy_tailed_zoo_energy_qualifies_and_its_loss_and_acc_do_not(tmp_path):
    """write_heavy_tailed_zoo's energy = ‖ΔW₀‖_F² (checked against the factors) spans 10²–10⁴× the healthy
    values; its loss (2–9) and acc (< 1) labels are positive but not heavy-tailed."""
    manifest = write_heavy_tailed_zoo(tmp_path / "hz", n=70, layers=3, shape=(8, 6), seed=0)
    with open(manifest) as fh:
        rows = list(csv.DictReader(fh))
    for r in rows[:14]:
        dw = lolscan.load(str(manifest.parent / r["path"]))["model.layers.0.proj"].delta().double()
        assert float(r["energy"]) == pytest.approx(float(torch.linalg.matrix_norm(dw)) ** 2, rel=1e-5)
    ds = prepare(read_manifest(manifest), ["acc", "loss", "energy"], progress=False)
    assert [t.name for t in log_candidates(ds)] == ["energy"]
