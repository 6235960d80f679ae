"""What `lolscan CMD` loads to start (issue 19): only CMD's module, and no pydantic, whose TypeAdapters typer
would build for every option of the command (about 0.1 s of each start); `cli.plain.light_runtime_param`
converts the values instead, exactly as typer's adapters do (checked here value by value)."""
from __future__ import annotations

import pytest

from helpers import REPO, run_cli_modules

EXAMPLE = str(REPO / "models" / "examples" / "lora-00553")


def _command_modules(mods: set[str]) -> set[str]:
    from lolscan.cli.app import COMMAND_MODULES

    return {m for m in COMMAND_MODULES.values() if f"lolscan.cli.{m}" in mods}


def test_inspect_loads_neither_pydantic_nor_the_other_commands():
    code, stderr, mods = run_cli_modules(["inspect", EXAMPLE, "--modules", "3"])
    assert code == 0, stderr
    assert _command_modules(mods) == {"inspect_cmd"}
    assert not {m for m in mods if m.split(".")[0] in ("pydantic", "pydantic_core", "torch")}


@pytest.mark.parametrize("name", ["inspect", "train", "predict", "eval", "models", "zoo"])
def test_each_command_registers_from_its_own_module(name):
    """`lolscan NAME --help` imports NAME's module alone (COMMAND_MODULES is right about it) and works."""
    from lolscan.cli.app import COMMAND_MODULES

    code, stderr, mods = run_cli_modules([name, "--help"])
    assert code == 0, stderr
    assert _command_modules(mods) == {COMMAND_MODULES[name]}


def test_group_help_version_completion_and_typos_see_every_command():
    import os
    import subprocess
    import sys

    from lolscan.cli.app import COMMAND_MODULES

    code, _, mods = run_cli_modules(["--help"])
    assert code == 0 and _command_modules(mods) == set(COMMAND_MODULES.values())
    code, _, mods = run_cli_modules(["--version"])
    assert code == 0 and _command_modules(mods) == set()
    env = {**os.environ, "PYTHONPATH": str(REPO), "_LOLSCAN_COMPLETE": "complete_bash", "COMP_WORDS": "lolscan ", "COMP_CWORD": "1"}
    out = subprocess.run([sys.executable, "-m", "lolscan"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.stdout.split() == list(COMMAND_MODULES), out.stderr
    env.update(COMP_WORDS="lolscan inspect --allow-n", COMP_CWORD="2")
    out = subprocess.run([sys.executable, "-m", "lolscan"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.stdout.split() == ["--allow-nonfinite"], out.stderr
    code, stderr, _ = run_cli_modules(["inspec"])
    assert code == 2 and "Did you mean 'inspect'" in stderr


def test_registering_every_module_gives_the_map_in_help_order():
    import typer.main

    from lolscan.cli.app import COMMAND_MODULES, _register, app

    _register()
    assert list(typer.main.get_command(app).commands) == list(COMMAND_MODULES)


VALUES = {
    "str": ["x", "", "é [/]", "-"],
    "int": ["3", "-2", "+4", "007", " 3", "3 ", "3.0", "x", "1_000", "0", "1", "\u0663", "", 5, True, 2.0],
    "float": ["0.5", "1e-3", ".5", "5.", "-0", "nan", "inf", "1_0", "x", "0.95", "0.9", "", "1E2", 0.25, 3, True],
    "Literal": ["table", "json", "JSON", "x", "", "all", "glnet", 1],
    "Path": ["a/b", "", ".", "/", "-", "é"],
    "list": [["a", "b"], [], ("a",), "a", ["x=1", "é"]],
    "bool": [True, False, "true", "no", "", 1],
}


def _kind(desc) -> str:
    ann = desc.annotation
    if desc.is_list:
        return "list"
    if desc.is_choice:
        return "Literal"
    if desc.is_path:
        return "Path"
    return getattr(ann, "__name__", str(ann))


def test_light_coercion_equals_typers_pydantic_adapters():
    """Every option and argument of every command, on valid and invalid values: the same value (and type)
    as typer's own adapter, or the same error."""
    pytest.importorskip("typer._coercion", reason="a typer without pydantic adapters: nothing to compare")
    import typer.main
    from typer import _click
    from typer._coercion import build_runtime_param

    from lolscan.cli.app import _register, app
    from lolscan.cli.plain import light_runtime_param

    _register()
    group = typer.main.get_command(app)
    checked = 0

    def outcome(rp, value, param, ctx):
        try:
            got = rp._coerce_value(value, param=param, ctx=ctx)
            return "ok", type(got), repr(got)  # repr: nan == nan
        except _click.exceptions.BadParameter as exc:
            return "error", None, exc.format_message()

    def walk(cmd, ctx):
        nonlocal checked
        for p in cmd.get_params(ctx):
            desc = getattr(p, "type_descriptor", None)
            if desc is None:
                continue
            light, typers = light_runtime_param(desc), build_runtime_param(desc)
            for value in VALUES[_kind(desc)]:
                assert outcome(light, value, p, ctx) == outcome(typers, value, p, ctx), (cmd.name, p.name, value)
                checked += 1
        for name in getattr(cmd, "list_commands", lambda c: [])(ctx):
            sub = cmd.get_command(ctx, name)
            walk(sub, _click.Context(sub, parent=ctx, info_name=name))

    walk(group, _click.Context(group, info_name="lolscan"))
    assert checked > 300
