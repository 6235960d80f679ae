"""The `lolscan` command: parse, call the library, render. Each command lives in its own module."""
from __future__ import annotations

import sys

import typer

from ..errors import LolscanError
from .console import print_error

app = typer.Typer(
    name="lolscan",
    help="Score LoRA adapter files with small GL-equivariant metanetworks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
    """Score LoRA adapter files with small GL-equivariant metanetworks.

    Exit codes: 0 ok, 1 a CI gate failed, 2 usage error, 3 unreadable or unsupported input,
    4 adapter does not fit the chosen checkpoint.
    """


def _register() -> None:
    # Each module adds its command(s) to `app`; keep this list in CLI help order.
    from . import inspect_cmd  # noqa: F401
    from . import train_cmd  # noqa: F401
    from . import predict_cmd  # noqa: F401
    from . import eval_cmd  # noqa: F401
    from . import models_cmd  # noqa: F401
    from . import zoo_cmd  # noqa: F401


def main() -> None:
    _register()
    try:
        app()
    except LolscanError as exc:  # library errors that escaped a command
        print_error(exc)
        sys.exit(exc.exit_code)
