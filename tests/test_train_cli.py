"""`lolscan train`, `lolscan eval` and `lolscan models` end to end through the CLI."""
from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from lolscan.cli.app import _register, app
from lolscan.cli.models_cmd import format_metric
from lolscan.training import write_synthetic_zoo

_register()
TINY = ["--steps", "60", "--threads", "1", "--hparam", "d=4", "--hparam", "hidden=16", "--no-progress"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return write_synthetic_zoo(tmp_path_factory.mktemp("zoo"), n=80, seed=2)


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("LOLSCAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOLSCAN_MODELS_DIR", str(tmp_path / "bundled"))
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_train_writes_a_named_checkpoint_with_plot(zoo, dirs):
    r = run("train", zoo, "-t", "score", "-t", "planted", "--out", "toy", *TINY)
    assert r.exit_code == 0, r.output
    ckpt = dirs / "data" / "models" / "toy"
    assert (ckpt / "card.json").is_file() and (ckpt / "model.safetensors").is_file()
    assert (ckpt / "pred_vs_true.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = json.loads((ckpt / "card.json").read_text())
    assert [t["name"] for t in card["targets"]] == ["score", "planted"]
    assert card["plot"]["panels"] == ["score", "planted"]
    assert "R²" in r.stdout and "glnet" in r.stdout
    assert "wrote checkpoint" in r.stderr and "wrote checkpoint" not in r.stdout
    # a second run refuses to overwrite unless asked
    r = run("train", zoo, "-t", "score", "--out", "toy", *TINY)
    assert r.exit_code == 2 and "already exists" in r.stderr
    first = json.loads((ckpt / "card.json").read_text())
    r = run("train", zoo, "-t", "score", "--out", "toy", "--overwrite", *TINY)
    card = json.loads((ckpt / "card.json").read_text())
    assert r.exit_code == 0 and [t["name"] for t in card["targets"]] == ["score"]
    # the replaced checkpoint's figures are kept in the card's history
    assert len(card["history"]) == 1 and card["history"][0]["test"] == first["metrics"]["test"]
    assert card["history"][0]["hp_baseline"]["score"] == first["hp_baseline"]["score"]  # here: "none" (no recipe columns)
    assert card["history"][0]["training_data"]["adapters"] == first["training_data"]["adapters"] == 80
    r = run("models", "--format", "json")
    listed = json.loads(r.stdout)["models"]
    assert [(m["name"], m["origin"], m["architecture"]) for m in listed] == [("toy", "user", "glnet")]
    r = run("models")
    assert r.exit_code == 0 and "toy" in r.stdout and "regression" in r.stdout
    r = run("models", "toy")
    assert r.exit_code == 0 and "test metrics" in r.stdout and "earlier (1)" in r.stdout
    # the earlier row shows the replaced checkpoint's own test metrics, whatever its targets were
    r2 = first["metrics"]["test"]["score"]["r2"]
    assert f"r2={format_metric(r2)}" in " ".join(r.stdout.split()) and "planted:" in r.stdout


def test_out_with_a_slash_is_a_path_and_kind_override(zoo, dirs):
    out = dirs / "somewhere" / "mine"
    r = run("train", zoo, "-t", "planted", "--kind", "planted=multiclass", "--out", str(out), *TINY)
    assert r.exit_code == 0, r.output
    card = json.loads((out / "card.json").read_text())
    assert card["targets"][0]["kind"] == "multiclass" and card["targets"][0]["labels"] == ["0", "1"]
    assert not (dirs / "data").exists()


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["-t", "nope", "--out", "x"], 2, "no column 'nope'"),
        (["-t", "score", "--kind", "score=ordinal", "--out", "x"], 2, "unknown kind"),
        (["-t", "score", "--hparam", "wings=3", "--out", "x"], 2, "unknown hyperparameter"),
        (["-t", "score"], 2, "--out"),
        (["-t", "score", "--arch", "resnet", "--out", "x"], 2, "resnet"),
    ],
)
def test_train_usage_errors(zoo, dirs, args, code, needle):
    r = run("train", zoo, *args, *TINY)
    assert r.exit_code == code, r.output
    assert needle in r.output
    assert not (dirs / "data" / "models" / "x").exists()


def test_unreadable_adapter_in_manifest_is_exit_3_naming_it(zoo, dirs):
    rows = list(csv.DictReader(open(zoo)))
    bad = dirs / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    manifest = dirs / "m.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "score"])
        for r in rows[:30]:
            w.writerow([str(zoo.parent / r["path"]), r["score"]])
        w.writerow([str(bad), "1.0"])
    r = run("train", manifest, "-t", "score", "--out", "x", *TINY)
    assert r.exit_code == 3 and str(bad) in r.stderr and "Traceback" not in r.output


def test_arch_all_compares_five_architectures(tmp_path_factory, dirs):
    mixed = write_synthetic_zoo(tmp_path_factory.mktemp("mixed"), n=60, rank=(2, 4), seed=3)
    r = run("train", mixed, "-t", "score", "--arch", "all", "--format", "json", "--steps", "20", "--threads", "1", "--no-progress")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    assert list(res) == ["glnet", "mlp", "mlp-oalign", "mlp-svd", "mlp-dense"]
    # this zoo mixes ranks 2-4: the raw-factor MLPs zero-pad every module to rank 4
    for arch in res:
        assert set(res[arch]["metrics"]["test"]["score"]) >= {"mse", "r2", "kendall_tau"}


def test_eval_reproduces_the_cards_test_metrics(zoo, dirs):
    rows = list(csv.DictReader(open(zoo)))
    manifest = dirs / "split.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "score", "dominant", "split"])
        for i, r in enumerate(rows):
            w.writerow([str(zoo.parent / r["path"]), r["score"], r["dominant"], ["train", "train", "train", "val", "test"][i % 5]])
    r = run("train", manifest, "-t", "score", "-t", "dominant", "--out", "ev", *TINY)
    assert r.exit_code == 0, r.output
    card = json.loads((dirs / "data" / "models" / "ev" / "card.json").read_text())
    r = run("eval", manifest, "--model", "ev", "--split", "test", "--format", "json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["schema_version"] == 1 and got["scored"] == 16
    for target, metrics in card["metrics"]["test"].items():
        for k, v in metrics.items():
            assert got["metrics"][target][k] == pytest.approx(v, rel=1e-4, abs=1e-6), (target, k)
    r = run("eval", manifest, "--model", "ev")
    assert r.exit_code == 0 and "accuracy" in r.stdout and "R²" in r.stdout and "Kendall" in r.stdout
    # one missing adapter: exit 3, the rest still evaluated
    with open(manifest, "a", newline="") as fh:
        csv.writer(fh).writerow([str(dirs / "gone.safetensors"), "0.1", "L0", "test"])
    r = run("eval", manifest, "--model", "ev", "--split", "test", "--format", "json")
    assert r.exit_code == 3 and json.loads(r.stdout)["scored"] == 16 and "gone.safetensors" in r.stderr


def test_train_leaves_out_adapters_with_nan_factors(tmp_path, dirs):
    """A diverged finetune (NaN factors) is left out with a warning; the rest trains to finite metrics."""
    from safetensors.torch import load_file, save_file

    manifest = write_synthetic_zoo(tmp_path / "z", n=60, seed=5)
    rows = list(csv.DictReader(open(manifest)))
    broken = manifest.parent / rows[3]["path"] / "adapter_model.safetensors"
    t = load_file(str(broken))
    key = sorted(t)[0]
    t[key][0, 0] = float("nan")
    save_file(t, str(broken))
    r = run("train", manifest, "-t", "score", "--out", "nanzoo", "--format", "json", *TINY)
    assert r.exit_code == 0, r.output
    assert "left out 1 adapter" in r.stderr and rows[3]["path"] in r.stderr
    card = json.loads((dirs / "data" / "models" / "nanzoo" / "card.json").read_text())
    assert card["training_data"]["excluded_non_finite"] == 1
    assert sum(card["training_data"]["splits"].values()) == 59
    r2 = json.loads(r.stdout)["results"]["glnet"]["metrics"]["test"]["score"]
    assert r2["n"] > 0 and all(isinstance(r2[k], float) and r2[k] == r2[k] for k in ("mse", "r2", "kendall_tau"))


def test_train_refuses_a_zoo_whose_training_adapters_are_all_nan(tmp_path, dirs):
    from safetensors.torch import load_file, save_file

    manifest = write_synthetic_zoo(tmp_path / "z", n=12, seed=6)
    for row in csv.DictReader(open(manifest)):
        f = manifest.parent / row["path"] / "adapter_model.safetensors"
        t = load_file(str(f))
        save_file({k: v * float("nan") for k, v in t.items()}, str(f))
    r = run("train", manifest, "-t", "score", "--out", "allnan", *TINY)
    assert r.exit_code == 3 and "NaN/Inf" in r.stderr and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1  # one line
    assert not (dirs / "data" / "models" / "allnan").exists()


def test_transform_option_reaches_the_card(tmp_path, dirs):
    from lolscan.training import write_heavy_tailed_zoo

    heavy = write_heavy_tailed_zoo(tmp_path / "heavy", n=60, layers=3, shape=(8, 6), seed=1)
    for mode, want in (("log", "log"), ("none", "none")):
        out = tmp_path / f"ck-{mode}"
        r = run("train", heavy, "-t", "energy", "--transform", mode, "--out", str(out), *TINY)
        assert r.exit_code == 0, r.output
        card = json.loads((out / "card.json").read_text())
        assert card["targets"][0].get("transform", "none") == want
    r = run("train", heavy, "-t", "energy", "--transform", "sqrt", "--out", str(tmp_path / "x"), *TINY)
    assert r.exit_code == 2 and "sqrt" in r.output


def test_lr_is_auto_by_default_and_a_number_searches_nothing(zoo, dirs):
    r = run("train", zoo, "-t", "score", "--out", "auto", *TINY)
    assert r.exit_code == 0, r.output
    training = json.loads((dirs / "data" / "models" / "auto" / "card.json").read_text())["training"]
    tried = training["lr_search"]
    assert tried[0]["lr"] == 1e-3 and training["lr"] == min(tried, key=lambda e: e["val_loss"])["lr"]
    assert f"glnet: lr {training['lr']:g} chosen by validation loss (tried 0.001: " in r.stderr
    assert "(auto)" in r.stdout
    r = run("train", zoo, "-t", "score", "--out", "fixed", "--lr", "0.001", *TINY)
    assert r.exit_code == 0, r.output
    training = json.loads((dirs / "data" / "models" / "fixed" / "card.json").read_text())["training"]
    assert training["lr"] == 0.001 and "lr_search" not in training
    assert "chosen by validation loss" not in r.stderr and "(auto)" not in r.stdout
    for bad in ("fast", "0", "-1e-3", "inf"):
        r = run("train", zoo, "-t", "score", "--out", "bad", "--lr", bad, *TINY)
        assert r.exit_code == 2 and "--lr" in r.output, (bad, r.output)


def test_json_results_give_each_targets_best_step(zoo, dirs):
    r = run("train", zoo, "-t", "score", "-t", "planted", "--out", "two", "--lr", "1e-3", "--format", "json", *TINY)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]["glnet"]
    card = json.loads((dirs / "data" / "models" / "two" / "card.json").read_text())
    assert set(res["best_steps"]) == {"score", "planted"} and res["best_steps"] == card["training"]["best_steps"]
    assert res["best_step"] == max(res["best_steps"].values()) and res["lr"] == 1e-3
