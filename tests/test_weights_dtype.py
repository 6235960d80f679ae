"""`lolscan train --weights-dtype float16|bfloat16`: a checkpoint whose parameters are stored at half precision.

Independent truth: the same training in float32 (settings and lr pinned, so the runs are identical up to the
final rounding), the stored file read back with safetensors, and `lolscan eval` scoring the saved checkpoint
from scratch on the test split."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import write_noise_zoo
from safetensors import safe_open
from typer.testing import CliRunner

from lolscan.checkpoint import CARD_NAME, WEIGHTS_NAME, CheckpointError, load_checkpoint, read_card
from lolscan.errors import UsageError
from lolscan.manifest import read_manifest
from lolscan.training import TrainOptions, prepare, save_checkpoint, train

OPTS = {"arch": "glnet", "hparams": {"d": 4, "hidden": 16, "products": True, "squash": "asinh"}, "lr": 1e-3, "max_steps": 120,
        "min_steps": 0, "eval_every": 10, "patience": 100, "progress": False, "threads": 1}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return write_noise_zoo(tmp_path_factory.mktemp("zoo"), n=60, seed=4)


@pytest.fixture(scope="module")
def saved(zoo, tmp_path_factory):
    """float32 and float16 checkpoints of one pinned training (an ensemble of two: members and their states)."""
    out = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for dtype in ("float32", "float16"):
        ds = prepare(read_manifest(zoo), ["score", "noise"], progress=False)
        result = train(ds, TrainOptions(**OPTS, ensemble=2, weights_dtype=dtype))
        paths[dtype] = save_checkpoint(ds, result, out / dtype, name=f"w-{dtype}")
    return paths


def _tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / WEIGHTS_NAME), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_parameters_are_stored_rounded_and_buffers_stay_float32(saved) -> None:
    full, half = _tensors(saved["float32"]), _tensors(saved["float16"])
    assert full.keys() == half.keys()
    params = {n for n, _ in load_checkpoint(saved["float32"]).model.named_parameters()}
    assert params and params < set(full)  # buffers too (input scales, feature statistics)
    for k, v in full.items():
        if k in params:
            assert half[k].dtype == torch.float16
            assert torch.equal(half[k], v.to(torch.float16)), k  # the float32 run's weights, rounded once
        else:
            assert half[k].dtype == v.dtype == torch.float32 and torch.equal(half[k], v), k
    size = {d: (p / WEIGHTS_NAME).stat().st_size for d, p in saved.items()}
    assert size["float16"] < 0.6 * size["float32"]
    assert read_card(saved["float16"])["weights_dtype"] == "float16"
    assert "weights_dtype" not in read_card(saved["float32"])


def test_the_card_measures_the_weights_it_ships(saved, zoo) -> None:
    """`lolscan eval` of the stored checkpoint, from scratch, gives the card's test metrics (calibration included)."""
    from lolscan.cli.app import _register, app

    _register()
    for dtype, path in saved.items():
        res = CliRunner().invoke(app, ["eval", str(zoo), "--model", str(path), "-f", "json"])
        assert res.exit_code == 0, res.output
        got = json.loads(res.stdout)["metrics"]
        want = read_card(path)["metrics"]["test"]
        for target, metrics in want.items():
            for name, value in metrics.items():
                assert got[target][name] == pytest.approx(value, rel=1e-6, abs=1e-9), (dtype, target, name)
    # and rounding moved the predictions: the float16 card is not the float32 one's figures copied
    m32, m16 = (read_card(saved[d])["metrics"]["test"]["score"]["mse"] for d in ("float32", "float16"))
    assert m32 != m16 and m16 == pytest.approx(m32, rel=0.05)


def test_loaded_half_checkpoint_runs_in_float32(saved) -> None:
    ckpt = load_checkpoint(saved["float16"])
    assert all(p.dtype == torch.float32 for p in ckpt.model.parameters())


def test_unknown_dtypes_are_refused(saved, tmp_path, zoo) -> None:
    card = read_card(saved["float16"])
    card["weights_dtype"] = "int8"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="weights_dtype 'int8'"):
        read_card(bad)
    ds = prepare(read_manifest(zoo), ["score"], progress=False)
    with pytest.raises(UsageError, match="weights dtype 'float64'"):
        train(ds, TrainOptions(**OPTS, weights_dtype="float64"))
