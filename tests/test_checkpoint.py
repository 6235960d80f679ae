"""Checkpoint folders: round trip, card validation (one-line errors), resolution order, fit checks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import lolscan
from lolscan.checkpoint import (
    CARD_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    output_path,
    resolve,
)
from lolscan.errors import EXIT_BAD_INPUT, EXIT_INCOMPATIBLE, IncompatibleAdapter, UsageError
from lolscan.training import save_checkpoint, write_synthetic_zoo

from helpers import REAL, train_tiny_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    _, ds, result, path = train_tiny_checkpoint(root, seed=1, name="tiny", out=root / "models" / "tiny")
    return ds, result, path


@pytest.fixture
def ckpt_copy(trained, tmp_path):
    _, _, path = trained
    dest = tmp_path / "copy"
    shutil.copytree(path, dest)
    return dest


def test_folder_holds_safetensors_card_domain_and_plot_only(trained):
    _, _, path = trained
    assert sorted(p.name for p in path.iterdir()) == ["card.json", "domain.safetensors", "model.safetensors", "pred_vs_true.png"]
    assert not list(path.parent.glob(".*"))  # no temporary folders left behind


def test_card_contents(trained):
    ds, result, path = trained
    card = json.loads((path / CARD_NAME).read_text())
    assert card["schema_version"] == 1 and card["lolscan_version"] == lolscan.__version__
    assert card["architecture"] == "glnet" and card["hparams"]["d"] == 4
    assert card["layer_spec"] == ds.spec.to_json() and len(card["layer_spec"]["layers"]) == 4
    assert card["base_model"] == ds.base_model
    score = next(t for t in card["targets"] if t["name"] == "score")
    train_scores = [float(ds.values["score"][i]) for i in ds.splits["train"]]
    assert score["mean"] == pytest.approx(sum(train_scores) / len(train_scores))  # fitted on train only
    dominant = next(t for t in card["targets"] if t["name"] == "dominant")
    assert dominant["kind"] == "multiclass" and dominant["labels"] == ["L0", "L1", "L2"]
    assert set(card["metrics"]) == {"train", "val", "test"}
    assert card["metrics"]["test"]["score"]["n"] == len(ds.splits["test"])
    assert card["training_data"]["adapters"] == 60 and card["training_data"]["split_method"] == "group"
    with open(path / WEIGHTS_NAME, "rb") as fh:
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    header.pop("__metadata__", None)
    assert card["tensors"] == {k: v["shape"] for k, v in header.items()}


def test_round_trip_predictions_are_identical(trained):
    ds, result, path = trained
    ckpt = load_checkpoint(path)
    adapters = ds.split_adapters("test")
    result.model.eval()
    with torch.no_grad():
        expected = result.model(result.model.collate(adapters))
    got = ckpt.scores(adapters)
    score = ckpt.targets[0]
    assert torch.equal(got["score"], score.scores(expected))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.pop("layer_spec"), "lacks required field"),
        (lambda c: c.update(schema_version=99), "newer than this lolscan"),
        (lambda c: c.update(schema_version="1"), "integer schema_version"),
        (lambda c: c.update(architecture="resnet"), "unknown architecture"),
        (lambda c: c.update(out_dim=7), "out_dim"),
        (lambda c: c["tensors"].update({"head.0.weight": [1, 2]}), "head.0.weight"),
        (lambda c: c["tensors"].update({"bogus": [3]}), "'bogus' is in card but not in model.safetensors"),
        (lambda c: c["hparams"].update(d=5), "is \\[.*\\] in the architecture"),
        (lambda c: c["targets"][0].update(kind="ordinal"), "malformed target"),
    ],
)
def test_broken_cards_give_one_line_errors(ckpt_copy, edit, match):
    card = json.loads((ckpt_copy / CARD_NAME).read_text())
    edit(card)
    (ckpt_copy / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=match) as exc:
        load_checkpoint(ckpt_copy)
    assert "\n" not in str(exc.value) and str(ckpt_copy) in str(exc.value)
    assert exc.value.exit_code == EXIT_BAD_INPUT


def test_damaged_weights_and_missing_files(ckpt_copy):
    data = (ckpt_copy / WEIGHTS_NAME).read_bytes()
    (ckpt_copy / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(lolscan.InputError, match="truncated|outside the file"):
        load_checkpoint(ckpt_copy)
    (ckpt_copy / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_checkpoint(ckpt_copy)
    (ckpt_copy / CARD_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable card"):
        load_checkpoint(ckpt_copy)


def test_resolution_order_path_then_user_then_bundled(trained, tmp_path, monkeypatch):
    ds, _, path = trained
    user, bundled = tmp_path / "data", tmp_path / "bundled"
    monkeypatch.setenv("LOLSCAN_DATA_DIR", str(user))
    monkeypatch.setenv("LOLSCAN_MODELS_DIR", str(bundled))
    shutil.copytree(path, bundled / "tiny")
    shutil.copytree(path, bundled / "only-bundled")
    assert resolve("tiny") == bundled / "tiny"
    shutil.copytree(path, user / "models" / "tiny")
    assert resolve("tiny") == user / "models" / "tiny"  # the user's own wins over the bundled one
    assert resolve("only-bundled") == bundled / "only-bundled"
    assert resolve(str(path)) == path
    monkeypatch.chdir(tmp_path)
    shutil.copytree(path, tmp_path / "tiny")  # an existing path wins over names
    assert resolve("tiny") == Path("tiny")
    with pytest.raises(UsageError, match="available: only-bundled, tiny"):
        resolve("nope")
    infos = list_checkpoints()
    assert [(i["name"], i["origin"]) for i in infos] == [("tiny", "user"), ("only-bundled", "bundled"), ("tiny", "bundled")]
    scores = [float(ds.values["score"][i]) for i in ds.splits["train"]]  # the card's range: the training labels'
    assert infos[0]["architecture"] == "glnet"
    assert f"score (regression, predictions within {min(scores):g}–{max(scores):g})" in infos[0]["task"]
    assert output_path("mine") == user / "models" / "mine" and output_path("./x/y") == Path("./x/y")


def test_bundled_models_default_to_the_repo_models_folder(monkeypatch):
    from lolscan.checkpoint import bundled_dir

    monkeypatch.delenv("LOLSCAN_MODELS_DIR", raising=False)
    assert bundled_dir() == Path(lolscan.__file__).resolve().parent.parent / "models"


def test_adapter_for_another_base_model_is_refused_naming_what_differs(trained, tmp_path):
    _, _, path = trained
    ckpt = load_checkpoint(path)
    other = lolscan.load(str(REAL / "gradience_tiny_lora"))
    with pytest.raises(IncompatibleAdapter, match="transformer.h.0.attn.c_attn") as exc:
        ckpt.require_fits(other)
    assert exc.value.exit_code == EXIT_INCOMPATIBLE and "tiny" in str(exc.value)
    # same module names, other width: a different base model of the same architecture family
    wide = tmp_path / "wide"
    write_synthetic_zoo(wide, n=1, shape=(20, 12))
    with pytest.raises(IncompatibleAdapter, match="20×12 in the adapter, 16×12 in the checkpoint"):
        ckpt.require_fits(lolscan.load(str(wide / "lora_0000")))


def test_save_refuses_to_clobber_and_is_atomic(trained, tmp_path, monkeypatch):
    ds, result, path = trained
    with pytest.raises(UsageError, match="already exists"):
        save_checkpoint(ds, result, path, name="tiny")
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(ds, result, tmp_path / "new", name="new")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one
