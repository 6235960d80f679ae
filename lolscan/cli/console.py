"""Shared rich consoles: machine-readable output goes to stdout, everything else to stderr."""
from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

from ..errors import LolscanError
from ..utils.progress import use_console

# emoji=False: ":smile:" in a file's metadata or a module name is shown as it is (and rich's emoji table,
# an import of every markup render, is never loaded)
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)
use_console(err_console)  # library progress bars (reading adapters, training) draw here too


def print_error(message: object, on: Console | None = None) -> None:
    """One ``error: …`` line on stderr. The message is printed as it is, never read as rich markup:
    file names and install commands hold [brackets]."""
    (on or err_console).print(Text.assemble(("error:", "bold red"), " ", str(message)), soft_wrap=True, highlight=False)


def print_warning(message: object, on: Console | None = None) -> None:
    """One ``warning: …`` line on stderr, the message never read as rich markup (see `print_error`)."""
    (on or err_console).print(Text.assemble(("warning:", "bold yellow"), " ", str(message)), soft_wrap=True, highlight=False)


def fail(exc: LolscanError) -> NoReturn:
    """A library error ends the command: its one ``error:`` line, then its exit code."""
    print_error(exc)
    raise typer.Exit(exc.exit_code)
