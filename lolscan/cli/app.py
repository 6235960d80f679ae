"""The `lolscan` command: parse, call the library, render. Each command lives in its own module."""
from __future__ import annotations

import os
import sys

import typer

from ..errors import LolscanError
from .console import print_error
from .plain import PlainGroup, examples

EXIT_CODES = """Exit codes:

0  ok
1  a CI gate failed (predict --fail-under/--fail-over)
2  usage error (bad option or argument)
3  unreadable or unsupported input, an adapter holding NaN/Inf values (inspect, predict;
   unless --allow-nonfinite), or a missing optional package
4  the adapter does not fit the chosen checkpoint"""

app = typer.Typer(
    name="lolscan",
    cls=PlainGroup,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    epilog=examples(
        "lolscan predict adapter.safetensors",
        "lolscan inspect ./loras/",
        "lolscan models",
        "lolscan zoo synth toy && lolscan train toy/manifest.csv -t score --out mine",
    ) + "\n\n" + EXIT_CODES,
)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"lolscan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Score LoRA adapter files with small GL-equivariant metanetworks."""


# Each module adds its command(s) to `app`, keyed here by command name, in CLI help order
# (tests/test_cli_lazy_imports.py checks this against what the modules register).
COMMAND_MODULES = {"inspect": "inspect_cmd", "train": "train_cmd", "predict": "predict_cmd", "eval": "eval_cmd",
                   "models": "models_cmd", "zoo": "zoo_cmd"}


def _register(only: str | None = None) -> None:
    """Import the command modules (each registers its commands): all of them, or the one of command ``only``."""
    import importlib

    for name, module in COMMAND_MODULES.items():
        if only is None or name == only:
            importlib.import_module(f"{__package__}.{module}")
    # in help order, whichever module an earlier import registered first (predict's hints import models')
    rank = {name: i for i, name in enumerate(COMMAND_MODULES)}
    app.registered_commands.sort(key=lambda c: rank.get(c.name or c.callback.__name__.replace("_", "-"), len(rank)))
    app.registered_groups.sort(key=lambda g: rank.get(g.name or "", len(rank)))


def _command_named(argv: list[str]) -> str | None:
    """The command ``argv`` runs when its first word names one and no shell completion is asked for, "" for
    a bare ``--version``, else None (then every command registers: the group's help, suggestions and
    completion list them all)."""
    if any(k.startswith("_LOLSCAN_COMPLETE") for k in os.environ):
        return None
    if argv == ["--version"]:
        return ""
    return argv[0] if argv and argv[0] in COMMAND_MODULES else None


def main() -> None:
    _register(_command_named(sys.argv[1:]))  # one command's module: the others' imports cost every start
    try:
        app(prog_name="lolscan")
    except LolscanError as exc:  # library errors that escaped a command
        print_error(exc)
        sys.exit(exc.exit_code)
