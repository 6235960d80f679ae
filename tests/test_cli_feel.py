"""The CLI as a person meets it: help with examples and plain metavars, exit codes at the top, a models
table that fits 80 columns, one message (and a hint) per adapter that does not fit, readable multilabel cells."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from helpers import REPO

from lolscan.cli.app import _register, app
from lolscan.scan.report import prediction_cell
from lolscan.targets import Target

_register()
COMMANDS = [[], ["inspect"], ["train"], ["predict"], ["eval"], ["models"], ["zoo"], ["zoo", "build"],
            ["zoo", "convert-base"], ["zoo", "summary"], ["zoo", "synth"]]


def _help(path: list[str]) -> str:
    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"}, prog_name="lolscan")
    assert r.exit_code == 0, r.output
    return r.output


def _command(path: list[str]):
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "lolscan")
def test_every_help_has_runnable_examples_and_plain_metavars(path):
    text = _help(path)
    assert "Examples:" in text
    lines = [ln.strip() for ln in text.split("Examples:", 1)[1].splitlines()]
    examples = [ln for ln in lines if ln.startswith("lolscan ")]
    assert any(ln.startswith(" ".join(["lolscan", *path])) for ln in examples), examples
    for ex in examples:  # every option an example uses exists on the command it names
        for part in ex.split("&&"):
            words = shlex.split(part.split("(")[0])[1:]
            sub, rest = [], list(words)
            while rest and not rest[0].startswith("-") and _has_sub(sub + [rest[0]]):
                sub.append(rest.pop(0))
            known = {o for p in _command(sub).params for o in (*p.opts, *getattr(p, "secondary_opts", ()))}
            for w in rest:
                if w.startswith("-") and w != "-":
                    assert w.split("=")[0] in known, (ex, w)
    for bad in ("<list[", "<bool>", "<str>", "<int", "<float", "<path>", "{targets}", "{manifest}", "<choice"):
        assert bad not in text, (path, bad)


def _has_sub(path: list[str]) -> bool:
    try:
        _command(path)
        return True
    except (KeyError, AttributeError):
        return False


def test_top_level_help_lists_exit_codes_and_offers_completion():
    text = _help([])
    assert "Exit codes" in text
    for code, words in ((0, "ok"), (1, "gate"), (2, "usage"), (3, "unreadable"), (4, "does not fit")):
        assert re.search(rf"^\W*{code}\s+.*{words}", text, re.M), (code, words)
    assert "--install-completion" in text and "--show-completion" in text
    assert "Usage: lolscan predict [OPTIONS] TARGET..." in " ".join(_help(["predict"]).split())


def _cli(*args: str, columns: int = 80, tmp=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": str(columns)}
    env.pop("LOLSCAN_MODELS_DIR", None)
    if tmp is not None:
        env["LOLSCAN_DATA_DIR"] = str(tmp)
    return subprocess.run([sys.executable, "-m", "lolscan", *args], capture_output=True, text=True, env=env, cwd=REPO)


def test_models_fits_80_columns_with_label_lists_abbreviated(tmp_path):
    r = _cli("models", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 80
    assert "labels:" in r.stdout and "…" in r.stdout  # "12 labels: arc_easy, mmlu_biomedical, …" (wrapped)
    assert "mmlu_psychology" not in r.stdout  # the 12 labels are not all spelled out
    rows = [ln for ln in lines if ln.startswith("│")]
    from lolscan.checkpoint import list_checkpoints

    n = len(list_checkpoints())
    assert n >= 5 and len(rows) <= 6 * n, r.stdout  # a few lines per checkpoint (was ~20 lines per multilabel row)


def test_an_adapter_that_does_not_fit_is_reported_once_with_a_hint_and_stderr_starts_clean(tmp_path):
    # without --model the first adapter chooses the (Qwen) bundled checkpoints; the SmolLM2 one is named once, with those that fit it
    r = _cli("predict", "models/examples-qwen/lora-00077", "models/examples/lora-00553", columns=200, tmp=tmp_path)
    assert r.returncode == 4
    both = r.stdout + r.stderr
    assert both.count("does not fit the bundled checkpoints this run chose") == 1
    assert not r.stderr.startswith("\n") and r.stderr.splitlines()[0].startswith("error: ")
    err = r.stderr.splitlines()[0]
    assert "lora-00553" in err and "bundled smollm2-data-sources, smollm2-val-loss fit it" in err
    assert not [ln for ln in r.stderr.splitlines() if ln.strip().startswith("hint:")]
    assert "incompatible" in r.stdout and "Predicts a LoRA's validation loss" in r.stdout
    r = _cli("predict", "models/examples/lora-00553", "models/examples-qwen/lora-00077", "--model", "smollm2-val-loss",
             columns=200, tmp=tmp_path)
    assert r.returncode == 4
    both = r.stdout + r.stderr
    assert both.count("does not fit checkpoint") == 1
    assert not r.stderr.startswith("\n") and r.stderr.splitlines()[0].startswith("error: ")
    hint = [ln for ln in r.stderr.splitlines() if ln.strip().startswith("hint:")]
    assert len(hint) == 1 and "qwen2.5-coder-1.5b-val-loss" in hint[0] and "Qwen/Qwen2.5-Coder-1.5B-Instruct" in hint[0]
    assert "incompatible" in r.stdout and "Predicts a LoRA's validation loss" in r.stdout
    ok = _cli("predict", "models/examples", columns=200, tmp=tmp_path)
    assert ok.returncode == 0 and ok.stderr.splitlines()[0].strip() != "", repr(ok.stderr[:80])


def test_error_lines_keep_brackets_in_file_names(tmp_path):
    bad = tmp_path / "bad[1].safetensors"
    bad.write_bytes(b"not a safetensors file")
    r = _cli("predict", str(bad), columns=300, tmp=tmp_path)
    assert r.returncode == 3 and "bad[1].safetensors" in r.stderr


def test_multilabel_cells_show_the_top_probabilities():
    t = Target("sources", "multilabel", labels=["a", "b", "c", "d"], width=4)
    pred = t.decode([0.49, 0.51, 0.47, 0.48])
    assert pred["value"] == ["b"]
    assert prediction_cell(t, pred) == "b 0.51, a 0.49, d 0.48, …"
    r = _cli("predict", "models/examples", "--model", "smollm2-data-sources", columns=300)
    assert r.returncode == 0, r.stderr
    assert re.search(r"\w+ \d\.\d\d, \w+ \d\.\d\d, \w+ \d\.\d\d, …", r.stdout), r.stdout
