"""`lolscan models NAME --self-test` on every bundled checkpoint, and on models that must fail it."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from lolscan.checkpoint import bundled_dir, is_checkpoint, load_checkpoint
from lolscan.cli.app import _register, app

_register()  # the commands register lazily (lolscan --help must not import torch)
from lolscan.evaluation.selftest import run_self_test

BUNDLED = sorted(p.name for p in bundled_dir().iterdir() if is_checkpoint(p)) if bundled_dir().is_dir() else []


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_checkpoint_passes(name: str) -> None:
    r = CliRunner().invoke(app, ["models", name, "--self-test", "-f", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["passed"] and {c["check"] for c in out["checks"]} == {"gauge", "padding", "sensitivity"}


def test_a_model_that_reads_the_raw_factors_fails_the_gauge_check() -> None:
    ckpt = load_checkpoint(bundled_dir() / BUNDLED[0])
    inner = ckpt.model

    class ReadsFactors(torch.nn.Module):  # leaks the gauge: adds Σ U (not a function of ΔW)
        def __init__(self):
            super().__init__()
            self.inner = copy.deepcopy(inner)

        def forward(self, batch):
            return self.inner(batch) + sum(g.U.sum((1, 2, 3)) for g in batch.groups).unsqueeze(1)

    bad = copy.copy(ckpt)
    bad.model = ReadsFactors()
    checks = {c.what: c for c in run_self_test(bad)}
    assert any(c.name == "gauge" and c.passed is False for c in checks.values())


def test_a_model_blind_to_the_update_fails_the_sensitivity_checks() -> None:
    ckpt = load_checkpoint(bundled_dir() / BUNDLED[0])

    class Constant(torch.nn.Module):
        def forward(self, batch):
            return torch.zeros(batch.batch_size, ckpt.card["out_dim"], dtype=torch.float64)

    bad = copy.copy(ckpt)
    bad.model = Constant()
    checks = run_self_test(bad)
    assert [c.passed for c in checks if c.name == "sensitivity"] == [False, False]
