"""Sharded checkpoint weights (`lolscan.checkpoint.shards`): ``model-0000K-of-0000N.safetensors`` and
``model.safetensors.index.json`` as transformers writes them.

Independent truth: the same trained model saved as one ``model.safetensors`` (its predictions and its raw
tensors), safetensors' own reader on each shard, and the HF index layout."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import train_tiny_checkpoint
from safetensors import safe_open
from typer.testing import CliRunner

from lolscan.checkpoint import CheckpointError, load_checkpoint
from lolscan.checkpoint.shards import INDEX_NAME, parse_size, plan_shards
from lolscan.errors import UsageError


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(one-file checkpoint, the same model sharded at 4 kB, adapters to predict)."""
    root = tmp_path_factory.mktemp("shards")
    zoo, ds, result, single = train_tiny_checkpoint(root, seed=2, name="one", out=root / "one")
    ckpt = load_checkpoint(single)
    sharded = ckpt.save(root / "sharded", max_shard_bytes=4_000)
    return single, sharded, ds.adapters[:6]


def test_shards_hold_every_tensor_once_within_the_limit(pair):
    single, sharded, _ = pair
    index = json.loads((sharded / INDEX_NAME).read_text())
    shards = sorted(p.name for p in sharded.glob("model-*-of-*.safetensors"))
    assert not (sharded / "model.safetensors").exists() and len(shards) >= 2
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    with safe_open(single / "model.safetensors", "pt") as f:
        truth = {k: f.get_tensor(k) for k in f.keys()}
    seen: dict[str, torch.Tensor] = {}
    for name in shards:
        with safe_open(sharded / name, "pt") as f:
            part = {k: f.get_tensor(k) for k in f.keys()}
        size = sum(t.numel() * t.element_size() for t in part.values())
        assert size <= 4_000 or len(part) == 1, (name, size)  # only a tensor larger than the limit stands alone
        assert not set(part) & set(seen)
        assert all(index["weight_map"][k] == name for k in part)
        seen.update(part)
    assert seen.keys() == truth.keys() == index["weight_map"].keys()
    assert all(torch.equal(seen[k], truth[k]) for k in truth)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in truth.values())


def test_sharded_checkpoint_predicts_as_the_single_file(pair):
    single, sharded, ads = pair
    a, b = load_checkpoint(single), load_checkpoint(sharded)
    sa, sb = a.scores(ads), b.scores(ads)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.card["tensors"] == b.card["tensors"]


def _copy(sharded: Path, dest: Path) -> Path:
    shutil.copytree(sharded, dest)
    return dest


def test_damaged_shards_are_refused_naming_the_file(pair, tmp_path):
    _, sharded, _ = pair
    last = sorted(sharded.glob("model-*-of-*.safetensors"))[-1].name

    gone = _copy(sharded, tmp_path / "gone")
    (gone / last).unlink()
    with pytest.raises(CheckpointError, match=f"names {last}, which is missing"):
        load_checkpoint(gone)

    moved = _copy(sharded, tmp_path / "moved")  # the index sends one tensor to another shard
    index = json.loads((moved / INDEX_NAME).read_text())
    key = next(k for k, v in index["weight_map"].items() if v == last)
    index["weight_map"][key] = sorted(set(index["weight_map"].values()))[0]
    (moved / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="the index maps") as exc:
        load_checkpoint(moved)
    assert "model-" in str(exc.value)

    for bad in ("../model-00001-of-00002.safetensors", "weights.bin", "model-00001-of-00003.safetensors"):
        odd = _copy(sharded, tmp_path / f"odd{len(list(tmp_path.iterdir()))}")
        index = json.loads((odd / INDEX_NAME).read_text())
        index["weight_map"][next(iter(index["weight_map"]))] = bad
        (odd / INDEX_NAME).write_text(json.dumps(index))
        with pytest.raises(CheckpointError, match=INDEX_NAME.replace(".", r"\.")):
            load_checkpoint(odd)

    both = _copy(sharded, tmp_path / "both")
    shutil.copy(pair[0] / "model.safetensors", both / "model.safetensors")
    with pytest.raises(CheckpointError, match="holds both"):
        load_checkpoint(both)

    (both / INDEX_NAME).write_text("{not json")
    (both / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="unreadable index"):
        load_checkpoint(both)


def test_parse_size_and_plan():
    assert parse_size("16MB") == 16_000_000 and parse_size("10MiB") == 10 * 2**20 and parse_size("5000") == 5000
    assert parse_size("1.5 kb") == 1500
    for bad in ("", "16 MBs", "-1MB", "0"):
        with pytest.raises(UsageError):
            parse_size(bad)
    sizes = {"a": 6, "b": 6, "c": 20, "d": 1, "e": 9}
    assert plan_shards(sizes, 12) == [["a", "b"], ["c"], ["d", "e"]]
    assert plan_shards(sizes, 100) == [list(sizes)]


def test_cli_train_writes_shards(tmp_path, monkeypatch):
    from lolscan.cli.app import _register, app
    from lolscan.training import write_synthetic_zoo

    _register()
    monkeypatch.setenv("LOLSCAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOLSCAN_MODELS_DIR", str(tmp_path / "bundled"))
    zoo = write_synthetic_zoo(tmp_path / "zoo", n=40, seed=1)
    tiny = ["--steps", "30", "--threads", "1", "--hparam", "d=4", "--hparam", "hidden=16", "--lr", "1e-3", "--no-progress"]
    r = CliRunner().invoke(app, ["train", str(zoo), "-t", "score", "--out", str(tmp_path / "x"), "--max-shard-size", "12 parsecs", *tiny])
    assert r.exit_code == 2 and "12 parsecs" in r.output and not (tmp_path / "x").exists(), r.output
    r = CliRunner().invoke(app, ["train", str(zoo), "-t", "score", "--out", str(tmp_path / "x"), "--max-shard-size", "4kB",
                                 "--ensemble", "2", *tiny])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "x" / INDEX_NAME).is_file() and not (tmp_path / "x" / "model.safetensors").exists()
    r = CliRunner().invoke(app, ["models", str(tmp_path / "x"), "--self-test"])
    assert r.exit_code == 0, r.output
    n = len(list((tmp_path / "x").glob("model-*-of-*.safetensors")))
    r = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["models", str(tmp_path / "x")])
    assert r.exit_code == 0 and f"{n} shards (model-0000K-of-{n:05d}.safetensors) and their index" in r.stdout, r.output
    r = CliRunner().invoke(app, ["predict", str(zoo.parent), "--model", str(tmp_path / "x"), "--format", "json", "--no-progress"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)["results"]) == 40, r.output
