"""The CLI starts without torch: `--help`, `--version` and `models` never import it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REPO, run_cli_modules


def _modules_after(code: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, env=env, cwd=REPO, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_the_cli_app_with_every_command_does_not_import_torch():
    mods = _modules_after("import lolscan.cli.app as a; a._register()")
    assert "lolscan.cli.predict_cmd" in mods and "lolscan.cli.models_cmd" in mods  # the commands were registered
    assert "torch" not in mods
    assert "numpy" not in mods


def test_help_version_and_models_run_without_torch():
    # sys.modules is checked at exit of the real command (typer raises SystemExit after printing)
    for argv in (["--help"], ["--version"], ["models"], ["models", "--format", "json"], ["predict", "--help"]):
        code, stderr, mods = run_cli_modules(argv)
        assert code == 0, (argv, stderr)
        assert "torch" not in mods, argv


def test_card_reader_architecture_names_match_the_nets_registry():
    from lolscan.checkpoint import ARCHITECTURES as card_names
    from lolscan.nets import ARCHITECTURES

    assert card_names is ARCHITECTURES  # one list, in lolscan.nets.names
