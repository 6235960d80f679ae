"""Shared rich consoles: machine-readable output goes to stdout, everything else to stderr."""
from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
