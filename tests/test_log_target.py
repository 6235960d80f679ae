"""The log transform of regression targets (`Target.transform`): encoding, the asymmetric interval,
coverage counted with that interval, and the card's field (absent = "none")."""
from __future__ import annotations

import math

import pytest
import torch

from lolscan.errors import UsageError
from lolscan.evaluation.calibration import conformal_halfwidth, interval_coverage
from lolscan.evaluation.metrics import target_metrics
from lolscan.targets import Target, fit_normalisation, make_target

VALUES = ["0.5", "2", "8", "", "400"]


def _log_target() -> Target:
    t = make_target("loss", VALUES)
    t.transform = "log"
    fit_normalisation(t, VALUES)
    return t


def test_log_target_standardises_the_logs_and_scores_back_in_units():
    t = _log_target()
    logs = [math.log(x) for x in (0.5, 2.0, 8.0, 400.0)]
    mean = sum(logs) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in logs) / 3)
    assert t.mean == pytest.approx(mean) and t.std == pytest.approx(std)
    y, mask = t.encode(VALUES)
    assert mask.tolist() == [True, True, True, False, True]
    assert y[mask, 0].tolist() == pytest.approx([(v - mean) / std for v in logs], rel=1e-6)
    assert t.scores(y)[mask, 0].tolist() == pytest.approx([0.5, 2.0, 8.0, 400.0], rel=1e-5)  # exp(z·std + mean)
    m = target_metrics(t, t.scores(y), y, mask)  # metrics in user units: a perfect prediction
    assert m["r2"] == pytest.approx(1.0, abs=1e-9) and m["mse"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(UsageError, match="needs values > 0"):
        t.encode(["0"])
    with pytest.raises(UsageError, match="needs values > 0"):
        fit_normalisation(_log_target(), ["3", "-1"])


def test_transform_is_checked_and_only_for_regression():
    with pytest.raises(UsageError, match="unknown transform"):
        Target("y", "regression", transform="sqrt")
    with pytest.raises(UsageError, match="for regression targets"):
        Target("y", "binary", labels=["0", "1"], transform="log")


def test_card_json_round_trips_and_an_old_card_means_none():
    t = _log_target()
    t.interval = 0.7
    data = t.to_json()
    assert data["transform"] == "log"
    back = Target.from_json(data)
    assert back == t
    old = make_target("score", ["1", "2"])
    assert "transform" not in old.to_json()  # untransformed cards are written exactly as before
    legacy = {k: v for k, v in t.to_json().items() if k != "transform"}  # a card from before the field
    assert Target.from_json(legacy).transform == "none"
    out = torch.tensor([[0.3]])
    assert float(Target.from_json(legacy).scores(out)) == pytest.approx(0.3 * t.std + t.mean)  # no exp


def test_interval_is_asymmetric_contains_the_prediction_and_coverage_uses_it():
    t = _log_target()
    t.interval, t.interval_level = math.log(2.0), 0.9
    d = t.decode([10.0])
    lo, hi = d["interval"]
    assert d["value"] == 10.0 and lo < 10.0 < hi
    assert (lo, hi) == pytest.approx((5.0, 20.0))  # [exp(m − q), exp(m + q)], m = log 10, q = log 2
    assert hi - 10.0 > 10.0 - lo  # asymmetric
    # coverage counts exactly the rows whose truth lies in decode's interval
    pred = torch.tensor([[10.0], [10.0], [10.0], [10.0], [1.0]])
    truth = ["19.9", "20.1", "5.1", "4.9", "0.55"]
    y, mask = t.encode(truth)
    bounds = [t.decode([float(p)])["interval"] for p in pred[:, 0]]
    expected = [lo_ <= float(v) <= hi_ for (lo_, hi_), v in zip(bounds, truth)]
    assert expected == [True, False, True, False, True]
    got = interval_coverage(t, pred, y, mask)["interval_coverage"]
    assert got == pytest.approx(sum(expected) / 5)
    from lolscan.scan.report import fmt_prediction

    assert fmt_prediction(d) == "10 [5, 20]"  # the table shows the bounds, not a ± half-width
    assert fmt_prediction({"value": 10.0, "interval": [8.0, 12.0]}) == "10 ± 2"


def test_log_interval_covers_fresh_draws_at_its_level():
    """Conformal on log residuals: multiplicative noise, exact coverage on fresh draws in user units."""
    g = torch.Generator().manual_seed(0)
    t = Target("y", "regression", transform="log", mean=0.0, std=1.0)

    def pred(n: int) -> torch.Tensor:
        return torch.exp(3 * torch.rand(n, generator=g, dtype=torch.float64))

    p_cal = pred(2000)
    y_cal = p_cal * torch.exp(0.5 * torch.randn(2000, generator=g, dtype=torch.float64))
    t.interval = conformal_halfwidth(t.residuals(p_cal, y_cal), 0.9)
    assert t.interval == pytest.approx(0.5 * 1.645, rel=0.08)
    p = pred(20000)
    y = p * torch.exp(0.5 * torch.randn(20000, generator=g, dtype=torch.float64))
    covered = sum(t.covers(float(a), float(b)) for a, b in zip(p, y)) / len(p)
    assert covered == pytest.approx(0.9, abs=0.015)
