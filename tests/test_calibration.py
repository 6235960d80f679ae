"""Intervals, temperatures and the in-domain score (lolscan.evaluation.calibration), and how predict shows them.

Truth: draws from known distributions (a conformal interval covers fresh draws at its level; a
temperature undoes a known logit scaling), adapters built far from the training ones, and the
toy checkpoint's own JSON/CSV output.
"""
from __future__ import annotations

import csv
import io
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from lolscan.evaluation.calibration import conformal_halfwidth, coverage, fit_domain, fit_temperature

from lolscan.cli.app import _register, app

_register()  # the commands register lazily (lolscan --help must not import torch)


def test_conformal_interval_covers_fresh_draws_at_its_level() -> None:
    g = torch.Generator().manual_seed(0)
    q = conformal_halfwidth(torch.randn(999, generator=g), 0.9)
    assert q == pytest.approx(1.645, abs=0.12)  # the 90 % two-sided normal quantile
    fresh = torch.randn(20000, generator=g)
    assert coverage(fresh.tolist(), [0.0] * len(fresh), q) == pytest.approx(0.9, abs=0.02)
    assert math.isinf(conformal_halfwidth(torch.randn(5, generator=g), 0.9))  # too few to promise 90 %


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_temperature_undoes_a_known_overconfidence(kind: str) -> None:
    g = torch.Generator().manual_seed(1)
    width = 1 if kind == "binary" else 4
    true_logits = torch.randn(4000, width, generator=g) * 1.5
    if kind == "binary":
        y = (torch.rand(4000, 1, generator=g) < torch.sigmoid(true_logits)).float()
    else:
        y = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=g).float()
    assert fit_temperature(3.0 * true_logits, y, kind) == pytest.approx(3.0, rel=0.15)
    assert fit_temperature(true_logits, y, kind) == pytest.approx(1.0, rel=0.15)


def test_domain_flags_adapters_unlike_the_training_ones() -> None:
    g = torch.Generator().manual_seed(2)

    def spectra(n: int, scale: float = 1.0) -> torch.Tensor:  # [N, L=3, k=8] sorted singular values
        return (torch.rand(n, 3, 8, generator=g) * scale).sort(dim=-1, descending=True).values

    dom = fit_domain(spectra(400), spectra(100))
    alike, unlike = dom.scores(spectra(300)), dom.scores(spectra(50, scale=30.0))
    assert float((alike <= dom.threshold).float().mean()) >= 0.95
    assert bool((unlike > dom.threshold).all())


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from helpers import train_tiny_checkpoint

    root = tmp_path_factory.mktemp("calib")
    zoo, ds, result, path = train_tiny_checkpoint(root, seed=3, name="toy", out=root / "toy")
    return zoo, path


def run(*args):
    return CliRunner().invoke(app, ["predict", *[str(a) for a in args]])


def test_predict_reports_interval_and_domain_in_every_format(toy) -> None:
    zoo, ckpt = toy
    card = json.loads((ckpt / "card.json").read_text())
    score = next(t for t in card["targets"] if t["name"] == "score")
    assert score["interval"] > 0 and card["domain"]["threshold"] > 0
    assert "interval_coverage" in card["metrics"]["test"]["score"]
    r = run(zoo / "lora_0001", zoo / "lora_0002", "--model", ckpt, "-f", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["results"]
    for row in rows:
        p = row["predictions"]["score"]
        lo, hi = p["interval"]
        assert lo < p["value"] < hi and hi - lo == pytest.approx(2 * score["interval"], rel=1e-5)
        assert p["interval_level"] == 0.9
        assert isinstance(row["domain"]["score"], float) and isinstance(row["domain"]["in_domain"], bool)
    r = run(zoo / "lora_0001", "--model", ckpt, "-f", "csv")
    line = next(csv.DictReader(io.StringIO(r.stdout)))
    assert float(line["score.lo"]) < float(line["score"]) < float(line["score.hi"])
    assert line["in_domain"] in ("0", "1") and float(line["domain_score"]) >= 0
    r = run(zoo / "lora_0001", "--model", ckpt)  # the table
    assert "±" in r.stdout and "domain" in r.stdout


def test_an_adapter_far_from_the_training_ones_is_flagged(toy, tmp_path) -> None:
    from safetensors.torch import load_file, save_file
    import shutil

    zoo, ckpt = toy
    far = tmp_path / "far"
    shutil.copytree(zoo / "lora_0001", far)
    tensors = load_file(str(far / "adapter_model.safetensors"))
    save_file({k: v * 40.0 for k, v in tensors.items()}, str(far / "adapter_model.safetensors"))
    r = run(far, "--model", ckpt, "-f", "json")
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)["results"][0]
    assert row["domain"]["in_domain"] is False
    assert "unlike this checkpoint's training adapters" in r.stderr
