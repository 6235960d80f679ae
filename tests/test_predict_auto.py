"""`lolscan predict` without --model: every bundled checkpoint that fits the adapters.

Independent truth: two tiny checkpoints of one layer spec and different targets ("a": score; "b":
planted, dominant) and one of another spec ("c": norm), trained here and made the bundled ones
($LOLSCAN_MODELS_DIR). Without --model, each row must hold the targets of a and b with the values
that ``--model a`` and ``--model b`` give on their own; an adapter no bundled checkpoint fits exits 4
with one line; a folder whose adapters fit different checkpoints is scored with those that fit its
first fitting adapter, the others named as fitting elsewhere; two fitting checkpoints predicting
one target name are refused (exit 2)."""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lolscan.cli.app import _register, app
from lolscan.manifest import read_manifest
from lolscan.training import TrainOptions, prepare, save_checkpoint, train, write_synthetic_zoo

_register()


def _train(manifest: Path, targets: list[str], out: Path, name: str) -> Path:
    ds = prepare(read_manifest(manifest), targets, progress=False)
    result = train(ds, TrainOptions(arch="glnet", hparams={"d": 4, "hidden": 16}, max_steps=30, progress=False, threads=1))
    return save_checkpoint(ds, result, out, name=name)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    big = write_synthetic_zoo(root / "zoo", n=60, seed=5)
    small = write_synthetic_zoo(root / "zoo2", n=40, layers=3, shape=(10, 8), seed=7)
    bundled = root / "bundled"
    _train(big, ["score"], bundled / "a", "a")
    _train(big, ["planted", "dominant"], bundled / "b", "b")
    _train(small, ["norm"], bundled / "c", "c")
    lib = root / "lib"
    for i in range(3):
        shutil.copytree(root / "zoo" / f"lora_{i:04d}", lib / f"lora_{i:04d}")
    return {"root": root, "bundled": bundled, "lib": lib}


@pytest.fixture(autouse=True)
def dirs(env, tmp_path, monkeypatch):
    monkeypatch.setenv("LOLSCAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOLSCAN_MODELS_DIR", str(env["bundled"]))
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.chdir(tmp_path)


def run(*args):
    return CliRunner().invoke(app, ["predict", *[str(a) for a in args]])


def llama_lora(path: Path) -> Path:
    """A LoRA of one 64×64 attention projection: no bundled checkpoint here fits it."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": rng.standard_normal((4, 64)).astype(np.float32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": rng.standard_normal((64, 4)).astype(np.float32)},
              str(path))
    return path


def close(x, y):
    if isinstance(x, float):
        return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-7)
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(close(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return len(x) == len(y) and all(close(a, b) for a, b in zip(x, y))
    return x == y


@pytest.mark.parametrize("procs", ["0", "2"])
def test_every_fitting_bundled_checkpoint_predicts_with_the_values_of_each_alone(env, procs):
    r = run(env["lib"], "--format", "json", "--procs", procs)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    alone = {m: json.loads(run(env["lib"], "--model", m, "--format", "json").stdout) for m in ("a", "b")}
    assert rep["model"]["name"] == "a + b"
    assert [(t["name"], t["model"]) for t in rep["model"]["targets"]] == [("score", "a"), ("planted", "b"), ("dominant", "b")]
    assert [m["name"] for m in rep["model"]["models"]] == ["a", "b"]
    assert len(rep["results"]) == 3
    for k, row in enumerate(rep["results"]):
        assert row["status"] == "ok" and set(row["predictions"]) == {"score", "planted", "dominant"}
        assert row["models"] == {"score": "a", "planted": "b", "dominant": "b"}
        for m in ("a", "b"):
            one = alone[m]["results"][k]
            assert one["source"] == row["source"] and "models" not in one
            for target, pred in one["predictions"].items():
                assert close(row["predictions"][target], pred), (m, target)
            for target, value in one["truth"].items():
                assert row["truth"][target] == value


def test_every_format_carries_the_targets_of_both(env):
    r = run(env["lib"])
    assert r.exit_code == 0, r.output
    assert "a + b" in r.stdout and all(t in r.stdout for t in ("score", "planted", "dominant"))
    header = next(csv.reader(io.StringIO(run(env["lib"], "-f", "csv").stdout)))
    assert {"score", "planted", "planted.probability", "dominant", "dominant.p[L0]"} <= set(header)
    lines = [json.loads(x) for x in run(env["lib"], "-f", "jsonl").stdout.splitlines()]
    assert len(lines) == 3 and all(x["models"] == {"score": "a", "planted": "b", "dominant": "b"} for x in lines)
    md = run(env["lib"], "-f", "markdown").stdout
    assert md.startswith("| adapter | status | score") and "planted" in md
    junit = ET.fromstring(run(env["lib"], "-f", "junit").stdout)
    out = next(junit.iter("system-out")).text
    assert "score=" in out and "(a)" in out and "planted=" in out and "(b)" in out
    # gates name any target of the set; one that none predicts lists them all
    v = json.loads(run(env["lib"], "-f", "json").stdout)["results"][0]["predictions"]["planted"]["probability"]
    r = run(env["lib"] / "lora_0000", "--fail-under", f"planted={v + 1e-3!r}", "-f", "sarif")
    assert r.exit_code == 1
    sarif = json.loads(r.stdout)
    assert [x["ruleId"] for x in sarif["runs"][0]["results"]] == ["lolscan/gate-failed"]
    assert "by b," in sarif["runs"][0]["results"][0]["message"]["text"]
    r = run(env["lib"], "--fail-over", "nope=1")
    assert r.exit_code == 2 and "score" in r.output and "dominant" in r.output


def test_model_option_keeps_the_single_checkpoint_report(env):
    rep = json.loads(run(env["lib"], "--model", "a", "-f", "json").stdout)
    assert rep["model"]["name"] == "a" and "models" not in rep["model"]
    assert all("model" not in t for t in rep["model"]["targets"])
    assert all(set(r["predictions"]) == {"score"} and "models" not in r for r in rep["results"])


def test_an_adapter_no_bundled_checkpoint_fits_exits_4_in_one_line(env, tmp_path):
    f = llama_lora(tmp_path / "q_lora.safetensors")
    r = run(f)
    assert r.exit_code == 4, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and not any(ln.strip().startswith("hint:") for ln in lines), r.stderr
    err = errors[0]
    assert "q_lora.safetensors" in err and "no bundled checkpoint fits it" in err
    assert "llama-style LLM, hidden 64" in err and "model.layers.0.self_attn.q_proj 64×64" in err  # the base and shape seen
    steps = ["`lolscan zoo build RECIPE", "`lolscan train ZOO/manifest.jsonl --out NAME`", "--model NAME`"]
    assert [err.index(s) for s in steps] == sorted(err.index(s) for s in steps)
    assert "Traceback" not in r.output and r.stdout.strip() == ""  # no table of nothing
    rep = json.loads(run(f, "-f", "json").stdout)
    assert rep["model"]["name"] is None and rep["results"][0]["status"] == "incompatible"
    assert rep["summary"]["exit_code"] == 4
    sarif = json.loads(run(f, "-f", "sarif").stdout)["runs"][0]["results"]
    assert [x["ruleId"] for x in sarif] == ["lolscan/does-not-fit"] and "None" not in sarif[0]["message"]["text"]
    assert "no bundled checkpoint fits it" in sarif[0]["message"]["text"]
    junit = run(f, "-f", "junit")
    assert junit.exit_code == 4 and "None" not in junit.stdout and "no bundled checkpoint fits it" in junit.stdout


@pytest.mark.parametrize("procs", ["0", "2"])
def test_a_folder_of_several_families_uses_those_of_its_first_fitting_adapter(env, tmp_path, procs):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    llama_lora(mixed / "0_none.safetensors")
    shutil.copytree(env["root"] / "zoo2" / "lora_0000", mixed / "1_small")  # fits c: chooses it
    shutil.copytree(env["root"] / "zoo" / "lora_0000", mixed / "2_big")  # fits a and b, not c
    r = run(mixed, "-f", "json", "--procs", procs)
    assert r.exit_code == 4, r.output
    rep = json.loads(r.stdout)
    assert rep["model"]["name"] == "c"
    rows = {Path(x["source"]).name: x for x in rep["results"]}
    assert list(rows) == ["0_none.safetensors", "1_small", "2_big"]
    assert rows["1_small"]["status"] == "ok" and set(rows["1_small"]["predictions"]) == {"norm"}
    assert rows["0_none.safetensors"]["error"].startswith("no bundled checkpoint fits it")
    big = rows["2_big"]
    assert big["status"] == "incompatible" and big["error"].startswith("does not fit the bundled checkpoints this run chose (c")
    assert "bundled a, b fit it" in big["error"]
    assert "1 scored" in r.stderr and "2 not fitting" in r.stderr


def test_two_fitting_checkpoints_with_one_target_name_are_refused(env, tmp_path, monkeypatch):
    bundled = tmp_path / "bundled"
    shutil.copytree(env["bundled"] / "a", bundled / "a")
    shutil.copytree(env["bundled"] / "a", bundled / "a2")
    card = json.loads((bundled / "a2" / "card.json").read_text())
    card["name"] = "a2"
    (bundled / "a2" / "card.json").write_text(json.dumps(card))
    monkeypatch.setenv("LOLSCAN_MODELS_DIR", str(bundled))
    r = run(env["lib"])
    assert r.exit_code == 2
    assert "checkpoints 'a' and 'a2' both predict 'score'; choose one with --model a or --model a2" in " ".join(r.stderr.split())
    assert run(env["lib"], "--model", "a2").exit_code == 0


def test_resume_without_model(env, tmp_path):
    out = tmp_path / "out.jsonl"
    assert run(env["lib"] / "lora_000[01]", "-o", out).exit_code == 0
    r = run(env["lib"], "-o", out, "--resume", "-f", "json")
    assert r.exit_code == 0 and "resuming: 2 of 3" in r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and all(x["models"]["dominant"] == "b" for x in rows)
    assert len(json.loads(r.stdout)["results"]) == 3


def test_engine_ray_without_model_gives_the_rows_of_the_local_scan(env, tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from lolscan.scan.ray_engine import RayOptions
    from lolscan.scan.run import PredictOptions, predict

    mixed = tmp_path / "mixed"
    shutil.copytree(env["lib"], mixed)
    shutil.copytree(env["root"] / "zoo2" / "lora_0000", mixed / "lora_9_small")
    local = predict(PredictOptions(targets=[str(mixed)], procs="0", source_options={}))
    assert local.ckpt.name == "a + b"
    repo = str(Path(__file__).resolve().parents[1])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": repo}})
    try:
        on_ray = predict(PredictOptions(targets=[str(mixed)], engine="ray", batch_size=4, source_options={}, ray=RayOptions()))
    finally:
        ray.shutdown()
    assert on_ray.ckpt.name == "a + b"
    assert [x["source"] for x in on_ray.rows] == [x["source"] for x in local.rows]
    for x, y in zip(on_ray.rows, local.rows):
        assert x["status"] == y["status"] and x.get("error") == y.get("error") and x.get("models") == y.get("models")
        assert close(x["predictions"], y["predictions"])
    assert "bundled c fits it" in local.rows[-1]["error"]


def test_the_domain_cell_names_the_checkpoints_that_say_no(env, tmp_path):
    """Checkpoints that disagree on the domain: the table's cell says NO and names those whose reference the
    adapter is far from (here "d", a copy of b whose card sets its threshold below any score), as each alone says."""
    from lolscan.checkpoint import CheckpointSet, load_checkpoint
    from lolscan.formats import load_adapter
    from lolscan.scan.report import fmt_domain

    d = tmp_path / "d"
    shutil.copytree(env["bundled"] / "b", d)
    card = json.loads((d / "card.json").read_text())
    card["name"], card["domain"]["threshold"] = "d", -1.0
    (d / "card.json").write_text(json.dumps(card))
    a, dd = load_checkpoint(env["bundled"] / "a"), load_checkpoint(d)
    ads = [load_adapter(p) for p in sorted(env["lib"].iterdir())]
    alone_a, alone_d = a.domain_rows(ads), dd.domain_rows(ads)
    rows = CheckpointSet([a, dd]).domain_rows(ads)
    for ra, rd, row in zip(alone_a, alone_d, rows):
        assert not rd["in_domain"] and not row["in_domain"]
        if ra["in_domain"]:
            assert fmt_domain(row) == f"NO {max(ra['score'], rd['score']):.2g} (d; 1 other yes)"
        else:
            assert fmt_domain(row) == f"NO {max(ra['score'], rd['score']):.2g}"
    assert any(r["in_domain"] for r in alone_a)  # the case that names one
    assert fmt_domain(alone_a[0]) == f"{'yes' if alone_a[0]['in_domain'] else 'NO'} {alone_a[0]['score']:.2g}"
