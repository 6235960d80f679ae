"""The `lolscan` command: parse, call the library, render. Each command lives in its own module."""
from __future__ import annotations

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
        app(prog_name="lolscan")
    except LolscanError as exc:  # library errors that escaped a command
        print_error(exc)
        sys.exit(exc.exit_code)
