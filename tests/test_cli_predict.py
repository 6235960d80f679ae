"""`lolscan predict` end to end: exit codes 0/1/2/3/4, gate boundary, formats, streaming output, resume."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lolscan
from lolscan.cli.app import _register, app
from lolscan.manifest import read_manifest
from lolscan.training import TrainOptions, prepare, save_checkpoint, train, write_synthetic_zoo

_register()
ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT.parent / "shared" / "fixtures" / "real"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    zoo = root / "zoo"
    manifest = write_synthetic_zoo(zoo, n=60, seed=5)
    ds = prepare(read_manifest(manifest), ["score", "planted", "dominant"], progress=False)
    result = train(ds, TrainOptions(arch="glnet", hparams={"d": 4, "hidden": 16}, max_steps=60, progress=False, threads=1))
    ckpt = save_checkpoint(ds, result, root / "models" / "toy", name="toy")
    lib = root / "lib"
    for i in range(6):
        shutil.copytree(zoo / f"lora_{i:04d}", lib / f"lora_{i:04d}")
    return {"root": root, "zoo": zoo, "ckpt": ckpt, "lib": lib}


@pytest.fixture(autouse=True)
def dirs(env, tmp_path, monkeypatch):
    monkeypatch.setenv("LOLSCAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOLSCAN_MODELS_DIR", str(env["root"] / "models"))  # "toy" is a bundled name here
    monkeypatch.setenv("COLUMNS", "200")  # the toy model's 4 targets, truth and domain columns fit unfolded
    monkeypatch.chdir(tmp_path)


def run(*args):
    return CliRunner().invoke(app, ["predict", *[str(a) for a in args]])


def flat(text: str) -> str:
    """Rich wraps error boxes at 80 columns: compare words, not line breaks."""
    return " ".join(text.replace("│", " ").split())


def one(env):
    return env["lib"] / "lora_0001"


def test_exit_0_table_with_real_predictions(env):
    r = run(env["lib"], "--model", "toy")
    assert r.exit_code == 0, r.output
    assert "lora_0005" in r.stdout and "score" in r.stdout and "6 scored" in r.stderr


def test_without_model_the_bundled_checkpoint_that_fits_is_used(env, tmp_path, monkeypatch):
    r = run(one(env), "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["model"]["name"] == "toy"
    shutil.copytree(env["ckpt"], tmp_path / "data" / "models" / "mine")  # a user checkpoint: not among the bundled ones
    r = run(one(env), "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["model"]["name"] == "toy"


def test_without_bundled_checkpoints_the_only_installed_one_is_used(env, tmp_path, monkeypatch):
    monkeypatch.setenv("LOLSCAN_MODELS_DIR", str(tmp_path / "no-bundled"))
    shutil.copytree(env["ckpt"], tmp_path / "data" / "models" / "mine")
    r = run(one(env), "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["model"]["name"] == "toy"  # the card's name
    shutil.copytree(env["ckpt"], tmp_path / "data" / "models" / "mine2")  # now two: name one
    r = run(one(env))
    assert r.exit_code == 2 and "no --model given" in flat(r.stderr)


def test_json_report_and_clean_stdout(env):
    r = run(env["lib"], "--model", "toy", "--format", "json")
    assert r.exit_code == 0
    rep = json.loads(r.stdout)  # nothing but the report on stdout
    assert rep["schema_version"] == 1 and rep["model"]["name"] == "toy"
    assert [Path(x["source"]).name for x in rep["results"]] == [f"lora_{i:04d}" for i in range(6)]
    expected = lolscan.checkpoint.load_checkpoint(env["ckpt"]).predict([lolscan.load(str(one(env)))])[0]
    assert rep["results"][1]["predictions"]["score"]["value"] == pytest.approx(expected["score"]["value"], abs=1e-5)
    r = run(env["lib"], "--model", "toy", "--format", "jsonl")
    lines = r.stdout.splitlines()
    assert len(lines) == 6 and all(json.loads(x)["schema_version"] == 1 for x in lines)
    r = run(env["lib"], "--model", "toy", "--format", "csv")
    assert len(list(csv.reader(io.StringIO(r.stdout)))) == 7
    r = run(env["lib"], "--model", "toy", "--format", "markdown")
    assert r.stdout.startswith("| adapter |") and len(r.stdout.splitlines()) == 8


def _score_of(env, target=None):
    r = run(target or one(env), "--model", "toy", "--format", "json")
    return json.loads(r.stdout)["results"][0]["predictions"]


def test_gate_boundary_is_inclusive(env):
    preds = _score_of(env)
    v = preds["score"]["value"]
    assert run(one(env), "--model", "toy", "--fail-under", f"score={v!r}").exit_code == 0
    assert run(one(env), "--model", "toy", "--fail-over", f"score={v!r}").exit_code == 0
    bigger = v + abs(v) * 1e-6 + 1e-9
    smaller = v - abs(v) * 1e-6 - 1e-9
    assert run(one(env), "--model", "toy", "--fail-under", f"score={bigger!r}").exit_code == 1
    assert run(one(env), "--model", "toy", "--fail-over", f"score={smaller!r}").exit_code == 1
    p = preds["dominant"]["probabilities"]["L1"]
    assert run(one(env), "--model", "toy", "--fail-under", f"dominant:L1={p!r}").exit_code == 0
    r = run(one(env), "--model", "toy", "--fail-over", f"planted={preds['planted']['probability'] / 2!r}")
    assert r.exit_code == 1 and "FAIL" in r.stdout


def test_junit_one_testcase_per_adapter_and_gate(env):
    v = _score_of(env)["score"]["value"]
    r = run(env["lib"], "--model", "toy", "--format", "junit", "--fail-under", f"score={v!r}", "--fail-over", "planted=1")
    root = ET.fromstring(r.stdout)
    cases = list(root.iter("testcase"))
    assert len(cases) == 6 * 2
    failures = [c.get("name") for c in cases if c.find("failure") is not None]
    assert r.exit_code == (1 if failures else 0)
    assert all("--fail-under" in name for name in failures)  # probabilities never exceed 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--fail-under", "score"], "TARGET=VALUE"),
        (["--fail-under", "score=high"], "not a number"),
        (["--fail-over", "nosuch=1"], "no target 'nosuch'"),
        (["--fail-over", "dominant=0.5"], "class probability"),
        (["--format", "yaml"], "yaml"),
        (["--resume"], "--output"),
        (["--output", "x.txt"], ".jsonl"),
        (["--model", "missing-model"], "no such checkpoint"),
    ],
)
def test_usage_errors_exit_2(env, args, needle):
    r = run(one(env), *(["--model", "toy"] if "--model" not in args else []), *args)
    assert r.exit_code == 2, r.output
    assert needle in flat(r.output) and "Traceback" not in r.output


def test_unreadable_file_is_reported_and_others_scored(env, tmp_path):
    lib = tmp_path / "mixed"
    shutil.copytree(env["lib"], lib)
    good = (lib / "lora_0002" / "adapter_model.safetensors").read_bytes()
    (lib / "broken.safetensors").write_bytes(good[: len(good) // 2])
    r = run(lib, "--model", "toy", "--format", "json")
    assert r.exit_code == 3
    rep = json.loads(r.stdout)
    status = {Path(x["source"]).name: x["status"] for x in rep["results"]}
    assert status.pop("broken.safetensors") == "error" and set(status.values()) == {"ok"} and len(status) == 6
    assert "broken.safetensors" in r.stderr and "error" in r.stderr
    assert run(tmp_path / "nothing-here.safetensors", "--model", "toy").exit_code == 3


def test_adapter_of_another_base_model_exit_4(env):
    r = run(REAL / "gradience_tiny_lora", "--model", "toy")
    assert r.exit_code == 4
    assert "does not fit checkpoint 'toy'" in flat(r.stderr) and "c_attn" in r.stderr
    assert "size mismatch" not in r.output and "Traceback" not in r.output
    # 4 wins over 3 and over a failed gate
    r = run(REAL / "gradience_tiny_lora", one(env), "nothing.safetensors", "--model", "toy", "--fail-under", "score=1e9")
    assert r.exit_code == 4


def test_streaming_output_and_resume(env, tmp_path, monkeypatch):
    out = tmp_path / "results.jsonl"
    r = run(env["lib"] / "lora_000[0-2]", "--model", "toy", "--output", out, "--format", "json")
    assert r.exit_code == 0
    first = [json.loads(x) for x in out.read_text().splitlines()]
    assert [Path(x["source"]).name for x in first] == ["lora_0000", "lora_0001", "lora_0002"]
    # a crash left half a line: it is dropped, not kept, on resume
    with open(out, "a") as fh:
        fh.write('{"schema_version": 1, "source": "cut')
    loads = []
    real = lolscan.load
    monkeypatch.setattr(lolscan, "load", lambda src, **kw: loads.append(Path(src).name) or real(src, **kw))
    r = run(env["lib"], "--model", "toy", "--output", out, "--resume", "--format", "json")
    assert r.exit_code == 0, r.output
    assert sorted(loads) == ["lora_0003", "lora_0004", "lora_0005"]  # done rows were skipped
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [Path(x["source"]).name for x in rows] == [f"lora_{i:04d}" for i in range(6)]
    assert len(json.loads(r.stdout)["results"]) == 6  # the report covers resumed rows too
    assert "resuming: 3 of 6" in r.stderr
    r = run(env["lib"], "--model", "toy", "--output", out, "--resume", "--format", "jsonl")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 6  # resumed rows are on stdout too
    assert len(out.read_text().splitlines()) == 6  # nothing new to append


def test_single_shot_outputs_are_atomic(env, tmp_path):
    out = tmp_path / "report.json"
    r = run(env["lib"], "--model", "toy", "--output", out, "--format", "csv")
    assert r.exit_code == 0 and json.loads(out.read_text())["schema_version"] == 1
    xml_out = tmp_path / "report.xml"
    assert run(env["lib"], "--model", "toy", "--output", xml_out).exit_code == 0
    assert ET.parse(xml_out).getroot().tag == "testsuites"
    # an error before scoring writes nothing at all
    none = tmp_path / "never.json"
    assert run(env["lib"], "--model", "no-such-model", "--output", none).exit_code == 2
    assert not none.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_truth_column_for_labelled_adapters(env, tmp_path):
    lib = tmp_path / "labelled"
    shutil.copytree(env["lib"], lib)
    (lib / "labels.json").write_text(json.dumps({"lora_0003": {"score": 0.75, "planted": 1}}))
    r = run(lib, "--model", "toy", "--format", "json")
    rows = {Path(x["source"]).name: x for x in json.loads(r.stdout)["results"]}
    assert rows["lora_0003"]["truth"] == {"score": 0.75, "planted": "1"}
    r = run(lib, "--model", "toy")
    assert "(true)" in r.stdout


def test_real_process_exit_codes(env, tmp_path):
    """Through `python -m lolscan` (the console entry point's main()), not only CliRunner."""
    base = {**os.environ, "LOLSCAN_MODELS_DIR": str(env["root"] / "models"), "LOLSCAN_DATA_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "lolscan", "predict", "--model", "toy", "--no-progress"]
    p = subprocess.run([*cmd, str(REAL / "gradience_tiny_lora"), "-f", "jsonl"], capture_output=True, text=True, cwd=ROOT, env=base, timeout=120)
    assert p.returncode == 4 and json.loads(p.stdout)["status"] == "incompatible" and "Traceback" not in p.stderr


def test_reader_processes_on_hostile_files_one_line_each_and_complete_output(env, tmp_path):
    """`--procs 2` (the torch-free readers): each hostile file is one line naming it, exit code 3,
    the JSONL output holds one whole row per target, the good adapters score as with threads."""
    from test_hostile_input import _cases

    lib = tmp_path / "lib"
    shutil.copytree(env["lib"], lib)
    bad = {p.name for p, _ in _cases(lib).values() if p.suffix != ".pt" and p.name != "empty_folder"}
    (lib / "good.safetensors").unlink()  # a fine LoRA, of another base model (exit code 4)
    base = {**os.environ, "LOLSCAN_MODELS_DIR": str(env["root"] / "models"), "LOLSCAN_DATA_DIR": str(tmp_path), "COLUMNS": "300"}
    cmd = [sys.executable, "-m", "lolscan", "predict", str(lib), "--model", "toy", "--no-progress", "-f", "jsonl"]
    procs = subprocess.run([*cmd, "--procs", "2", "-o", str(tmp_path / "out.jsonl")], capture_output=True, text=True, cwd=ROOT, env=base, timeout=300)
    threads = subprocess.run([*cmd, "--procs", "0"], capture_output=True, text=True, cwd=ROOT, env=base, timeout=300)
    assert procs.returncode == 3 and "Traceback" not in procs.stderr, procs.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [json.loads(line) for line in procs.stdout.splitlines()] == rows == [json.loads(line) for line in threads.stdout.splitlines()]
    errors = {Path(r["source"]).name for r in rows if r["status"] == "error"}
    assert errors == bad and {r["status"] for r in rows if Path(r["source"]).name not in bad} == {"ok"}
    lines = [line for line in procs.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == len(bad) and all(any(name in line for line in lines) for name in bad)


# ---- issue 24: exit codes whatever the row order, resume edges, nonfinite, the output lock ------------------
def test_exit_code_looks_at_every_row_not_the_last():
    from lolscan.scan.gates import exit_code

    ok = {"status": "ok", "gates": [{"passed": True}]}
    fail = {"status": "ok", "gates": [{"passed": False}]}
    assert exit_code([fail, ok]) == 1 and exit_code([ok, fail]) == 1
    assert exit_code([{"status": "error"}, ok]) == 3 and exit_code([{"status": "incompatible"}, {"status": "error"}, ok]) == 4
    assert exit_code([{"status": "nonfinite"}, ok]) == 3 and exit_code([{"status": "nonfinite"}, ok], allow_nonfinite=True) == 0
    assert exit_code([{"status": "nonfinite"}, fail], allow_nonfinite=True) == 1


def test_failing_gate_on_the_first_adapter_fails_the_run(env):
    scores = {}
    for i in range(6):
        target = env["lib"] / f"lora_{i:04d}"
        scores[target] = _score_of(env, target)["score"]["value"]
    low, high = min(scores, key=scores.get), max(scores, key=scores.get)
    assert scores[low] < scores[high]
    bound = (scores[low] + scores[high]) / 2
    r = run(low, high, "--model", "toy", "--fail-under", f"score={bound!r}", "--format", "json")
    assert r.exit_code == 1, r.output
    assert [g["passed"] for row in json.loads(r.stdout)["results"] for g in row["gates"]] == [False, True]


def test_read_done_keeps_only_whole_parsed_lines(tmp_path):
    from lolscan.scan.run import read_done

    a, b = json.dumps({"source": "a", "status": "ok"}) + "\n", json.dumps({"source": "b", "status": "ok"})
    p = tmp_path / "o.jsonl"
    p.write_text(a + b)  # b is complete JSON but has no newline: a crash may have cut it after the brace
    done, good = read_done(p)
    assert set(done) == {"a"} and good == len(a.encode())
    p.write_text(a + "not json\n" + b + "\n")
    done, good = read_done(p)
    assert set(done) == {"a"} and good == len(a.encode())  # counted only once parsed; nothing after it


def test_resume_rescores_a_last_line_without_newline_and_drops_a_bad_line(env, tmp_path, monkeypatch):
    out = tmp_path / "results.jsonl"
    assert run(env["lib"] / "lora_000[0-2]", "--model", "toy", "--output", out).exit_code == 0
    out.write_bytes(out.read_bytes().rstrip(b"\n"))  # the last row is whole JSON, its newline missing
    loads = []
    real = lolscan.load
    monkeypatch.setattr(lolscan, "load", lambda src, **kw: loads.append(Path(src).name) or real(src, **kw))
    r = run(env["lib"] / "lora_000[0-2]", "--model", "toy", "--output", out, "--resume")
    assert r.exit_code == 0 and loads == ["lora_0002"], (loads, r.output)
    text = out.read_text()
    assert text.endswith("\n") and [Path(json.loads(x)["source"]).name for x in text.splitlines()] == ["lora_0000", "lora_0001", "lora_0002"]
    with open(out, "a") as fh:
        fh.write("garbage that is not JSON\n")
    loads.clear()
    r = run(env["lib"] / "lora_000[0-3]", "--model", "toy", "--output", out, "--resume")
    assert r.exit_code == 0 and loads == ["lora_0003"]
    assert [Path(json.loads(x)["source"]).name for x in out.read_text().splitlines()] == [f"lora_{i:04d}" for i in range(4)]


def test_resume_rescores_error_and_incompatible_rows(env, tmp_path, monkeypatch):
    out = tmp_path / "results.jsonl"
    assert run(env["lib"] / "lora_000[0-2]", "--model", "toy", "--output", out).exit_code == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    rows[0].update(status="error", error="was unreadable", predictions={})
    rows[1].update(status="incompatible", error="did not fit", predictions={})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loads = []
    real = lolscan.load
    monkeypatch.setattr(lolscan, "load", lambda src, **kw: loads.append(Path(src).name) or real(src, **kw))
    r = run(env["lib"] / "lora_000[0-2]", "--model", "toy", "--output", out, "--resume", "--format", "json")
    assert r.exit_code == 0, r.output
    assert sorted(loads) == ["lora_0000", "lora_0001"] and "resuming: 1 of 3" in r.stderr
    assert [x["status"] for x in json.loads(r.stdout)["results"]] == ["ok", "ok", "ok"]


def _nan_copy(env, tmp_path) -> Path:
    from safetensors.torch import load_file, save_file

    d = tmp_path / "nan_adapter"
    shutil.copytree(env["lib"] / "lora_0000", d)
    t = load_file(str(d / "adapter_model.safetensors"))
    key = sorted(k for k in t if k.endswith("lora_B.weight"))[0]
    t[key] = t[key].clone()
    t[key].view(-1)[0] = float("nan")
    save_file(t, str(d / "adapter_model.safetensors"))
    return d


def test_nonfinite_adapter_is_never_ok(env, tmp_path):
    bad = _nan_copy(env, tmp_path)
    r = run(bad, one(env), "--model", "toy", "--format", "json")
    assert r.exit_code == 3, r.output
    rows = json.loads(r.stdout)["results"]
    assert [x["status"] for x in rows] == ["nonfinite", "ok"] and rows[0]["predictions"] == {}
    assert "1 module(s) hold NaN/Inf values" in rows[0]["error"] and json.loads(r.stdout)["summary"]["nonfinite"] == 1
    warning = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "nan_adapter" in warning[0] and "NaN/Inf" in warning[0] and "1 holding NaN/Inf" in r.stderr
    r = run(bad, one(env), "--model", "toy", "--format", "json", "--allow-nonfinite")
    assert r.exit_code == 0 and json.loads(r.stdout)["results"][0]["status"] == "nonfinite"
    r = run(bad, "--model", "toy", "--format", "junit", "--allow-nonfinite")
    (case,) = ET.fromstring(r.stdout).iter("testcase")
    assert case.find("error").get("type") == "nonfinite"
    r = run(bad, "--model", "toy", "--format", "junit", "--fail-under", "score=-1e9")
    assert r.exit_code == 3  # a gate cannot pass an adapter that was not scored


def test_second_writer_of_the_same_output_fails_fast(env, tmp_path):
    from filelock import FileLock

    out = tmp_path / "results.jsonl"
    with FileLock(str(out) + ".lock"):
        r = run(one(env), "--model", "toy", "--output", out, "--resume")
    assert r.exit_code == 3 and "is being written by another lolscan run" in flat(r.stderr)
    assert not out.exists()
    assert run(one(env), "--model", "toy", "--output", out, "--resume").exit_code == 0 and len(out.read_text().splitlines()) == 1
