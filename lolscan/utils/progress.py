"""The console that library progress bars draw on (reading adapters, training steps).

The library never imports the CLI: the CLI points this at its own stderr console
(`lolscan.cli.console` calls `use_console`), so its messages and the bars share one live display.
Used as a library, bars go to a stderr console of their own.
"""
from __future__ import annotations

from typing import Any

_console: Any = None


def use_console(console: Any) -> None:
    """Draw progress bars on ``console`` (a rich Console) from now on."""
    global _console
    _console = console


def progress_console() -> Any:
    """The rich Console for progress bars (stderr unless `use_console` named another)."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True)
    return _console
