"""Label-noise R² ceilings (`lolscan.evaluation.noise`) against a direct simulation: adapters with known true
accuracies, labels measured on N questions; the R² of the truth against the labels is the ceiling."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import load_script

from lolscan.evaluation.noise import (
    binomial_r2_ceiling,
    bootstrap_r2_ceiling,
    halves_r2_ceiling,
    pack_correct,
    repeat_r2_ceiling,
    unpack_correct,
)


def _r2(y, pred):
    return 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)


def _simulate(rng, n_ad=400, n_q=250, sd=0.06):
    p = np.clip(rng.normal(0.5, sd, n_ad), 0.05, 0.95)
    correct = rng.random((n_ad, n_q)) < p[:, None]
    return p, correct


@pytest.mark.parametrize("n_q,sd", [(250, 0.06), (1172, 0.03), (100, 0.1)])
def test_binomial_ceiling_matches_simulation(n_q, sd):
    rng = np.random.default_rng(1)
    sims, est = [], []
    for _ in range(20):
        p, correct = _simulate(rng, n_q=n_q, sd=sd)
        y = correct.mean(1)
        sims.append(_r2(y, p))
        est.append(binomial_r2_ceiling(y, n_q)["ceiling"])
    # the estimator is unbiased for the noise variance: its mean over replicates meets the simulated R²
    assert np.mean(est) == pytest.approx(np.mean(sims), abs=0.01)
    assert np.std(np.array(est) - np.array(sims)) < 0.06


def test_bootstrap_ceiling_matches_simulation():
    rng = np.random.default_rng(2)
    sims, boot, shared = [], [], []
    for _ in range(6):
        p, correct = _simulate(rng, n_ad=300, n_q=250, sd=0.06)
        sims.append(_r2(correct.mean(1), p))
        r = bootstrap_r2_ceiling(correct, n_boot=100, seed=0)
        boot.append(r["ceiling"])
        shared.append(r["ceiling_shared"])
    # independent questions: bootstrap ≈ binomial plug-in (slightly pessimistic: the plug-in variance is
    # p(1-p)/N, not /(N-1)) ≈ simulated
    assert np.mean(boot) == pytest.approx(np.mean(sims), abs=0.03)
    assert np.mean(shared) == pytest.approx(np.mean(boot), abs=0.02)


def test_bootstrap_shared_removes_common_question_difficulty():
    """Questions that every adapter gets right or wrong together move all labels alike under resampling:
    that shift is noise per adapter but costs no R², and ceiling_shared sees it."""
    rng = np.random.default_rng(3)
    n_ad, n_q = 200, 300
    easy = rng.random(n_q) < 0.5  # answered by everyone (easy) or by no one (hard) ...
    skill = rng.normal(0.5, 0.1, n_ad).clip(0.05, 0.95)
    mixed = rng.random(n_q) < 0.3  # ... except a third, answered with the adapter's own skill
    correct = np.where(mixed[None, :], rng.random((n_ad, n_q)) < skill[:, None], easy[None, :])
    r = bootstrap_r2_ceiling(correct, n_boot=200, seed=1)
    assert r["ceiling_shared"] > r["ceiling"] + 0.05


def test_repeat_ceiling_matches_simulation():
    rng = np.random.default_rng(4)
    p, c1 = _simulate(rng, n_ad=2000, n_q=250)
    c2 = rng.random(c1.shape) < p[:, None]
    y1, y2 = c1.mean(1), c2.mean(1)
    r = repeat_r2_ceiling(y1, y2)
    assert r["ceiling"] == pytest.approx((_r2(y1, p) + _r2(y2, p)) / 2, abs=0.05)
    assert r["ceiling"] == pytest.approx(binomial_r2_ceiling(np.r_[y1, y2], 250)["ceiling"], abs=0.05)


def test_repeat_ceiling_ignores_a_shared_offset():
    rng = np.random.default_rng(6)
    y = rng.normal(size=500)
    noisy1, noisy2 = y + 0.3 * rng.normal(size=500), y + 0.3 * rng.normal(size=500)
    plain, shifted = repeat_r2_ceiling(noisy1, noisy2), repeat_r2_ceiling(noisy1, noisy2 + 5.0)
    assert shifted["ceiling"] == pytest.approx(plain["ceiling"], abs=1e-9)
    assert plain["ceiling"] == pytest.approx(1 / 1.09, abs=0.03)  # var(y) / (var(y) + 0.3²)


def test_halves_ceiling_matches_simulation():
    """A label = mean over S seeds of truth + seed offset (shared by every adapter) + per-image noise: the
    split-half ceiling equals the R² of the truth against the full label, which no adapter labelled twice."""
    rng = np.random.default_rng(8)
    for seeds in (2, 4, 5):
        t = rng.normal(size=3000)
        per_seed = t[:, None] + rng.normal(size=seeds)[None] * 3 + 0.8 * rng.normal(size=(3000, seeds))
        label = per_seed.mean(1)
        r = halves_r2_ceiling(per_seed)
        assert r["ceiling"] == pytest.approx(_r2(label, t + label.mean() - t.mean()), abs=0.03)
        assert r["ceiling"] == pytest.approx(1 / (1 + 0.64 / seeds), abs=0.03)
        assert r["seeds"] == seeds and r["n"] == 3000


def test_halves_script_reads_the_seed_columns(tmp_path, capsys):
    rng = np.random.default_rng(9)
    t = rng.normal(size=400)
    rows = [{"id": f"a{i}", "clip_score": 0.0, **{f"clip_score_s{k}": float(t[i] + rng.normal()) for k in range(4)}}
            for i in range(400)]
    for r in rows:
        r["clip_score"] = float(np.mean([r[f"clip_score_s{k}"] for k in range(4)]))
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    out = load_script("bench/label_noise.py").main([str(path), "--label", "clip_score", "--halves"])
    assert out["halves"]["seeds"] == 4
    assert out["halves"]["ceiling"] == pytest.approx(0.8, abs=0.06)  # 1 / (1 + 1/4)
    with pytest.raises(SystemExit):
        load_script("bench/label_noise.py").main([str(path), "--label", "clip_score_p0", "--halves"])


def test_pack_correct_round_trips():
    rng = np.random.default_rng(5)
    for n in (1, 7, 8, 9, 1172):
        bits = rng.random(n) < 0.5
        text = pack_correct(bits)
        assert len(text) == 2 * ((n + 7) // 8)
        assert unpack_correct(text, n).tolist() == bits.tolist()
    with pytest.raises(ValueError):
        unpack_correct(pack_correct(np.ones(9, bool)), 20)
    with pytest.raises(ValueError):
        binomial_r2_ceiling([0.5], 100)


def test_bench_label_noise_reads_a_manifest(tmp_path):
    import json

    mod = load_script("bench/label_noise.py")
    rng = np.random.default_rng(6)
    _, correct = _simulate(rng, n_ad=200, n_q=101)
    rows = [{"id": f"l{i}", "split": "test", "finite": True, "arc_c_acc": float(c.mean()),
             "arc_c_correct": pack_correct(c)} for i, c in enumerate(correct)]
    rows.append({"id": "dead", "finite": False, "arc_c_acc": float("nan"), "arc_c_correct": ""})
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = mod.main([str(path), "--questions", "101", "--bootstrap", "50", "--retest", str(path)])
    assert out["n"] == 200
    assert out["binomial"]["ceiling"] == pytest.approx(binomial_r2_ceiling(correct.mean(1), 101)["ceiling"])
    assert out["bootstrap"]["ceiling"] == pytest.approx(bootstrap_r2_ceiling(correct, 50)["ceiling"])
    assert out["retest"]["ceiling"] == pytest.approx(1.0)  # a manifest against itself: no noise


def test_bench_label_noise_max_lr_keeps_the_healthy_loras(tmp_path):
    import json

    mod = load_script("bench/label_noise.py")
    rng = np.random.default_rng(7)
    _, correct = _simulate(rng, n_ad=40, n_q=50)
    rows = [{"id": f"l{i}", "lr": 1e-4 if i % 4 else 5e-3, "arc_c_acc": float(c.mean()), "arc_c_correct": pack_correct(c)}
            for i, c in enumerate(correct)]
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = mod.main([str(path), "--questions", "50", "--bootstrap", "20", "--max-lr", "1e-3"])
    healthy = correct[[i for i in range(40) if i % 4]]
    assert out["n"] == 30 and out["max_lr"] == 1e-3
    assert out["binomial"]["ceiling"] == pytest.approx(binomial_r2_ceiling(healthy.mean(1), 50)["ceiling"])
    assert out["bootstrap"]["ceiling"] == pytest.approx(bootstrap_r2_ceiling(healthy, 20)["ceiling"])


def test_lr_bins_report_each_ranges_spread_and_its_binomial_noise(tmp_path):
    """--lr-bins: per learning-rate range, the LoRAs in it (edges half-open), the label's mean and sd as numpy
    computes them on those rows, and the binomial noise sd of an accuracy over N questions."""
    import gzip
    import json

    rng = np.random.default_rng(3)
    lr = 10 ** rng.uniform(-5, -2, 300)
    acc = np.where(lr < 1e-3, 0.6 + rng.normal(0, 0.002, lr.size), 0.6 - 40 * lr)
    path = tmp_path / "m.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i, (a, b) in enumerate(zip(lr, acc)):
            f.write(json.dumps({"id": f"l{i}", "lr": float(a), "arc_c_acc": float(b)}) + "\n")
    out = load_script("bench/label_noise.py").main([str(path), "--questions", "1172", "--lr-bins", "1e-5", "1e-3", "1e-2"])
    low, high = out["lr_bins"]
    for b, keep in ((low, lr < 1e-3), (high, lr >= 1e-3)):
        assert b["n"] == int(keep.sum())
        assert b["mean"] == pytest.approx(acc[keep].mean()) and b["sd"] == pytest.approx(acc[keep].std())
        assert b["noise_sd"] == pytest.approx(np.sqrt(np.mean(acc[keep] * (1 - acc[keep])) / 1171))
    assert low["sd"] < low["noise_sd"] < high["sd"]  # the healthy spread is under the noise, the damaged one far above
