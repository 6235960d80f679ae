"""Errors that map onto lolscan's documented exit codes.

Exit codes: 0 ok, 1 a CI gate failed, 2 usage error, 3 unreadable or unsupported
input, 4 adapter does not fit the chosen checkpoint.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_INCOMPATIBLE = 4


class LolscanError(Exception):
    """Base class: carries a one-line message and the process exit code."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, path: object | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(LolscanError):
    """A file or URI that cannot be read (missing, truncated, malformed, hostile)."""

    exit_code = EXIT_BAD_INPUT


class UnsupportedFormat(InputError):
    """A readable file whose adapter type cannot be expressed as exact low-rank factors."""


class IncompatibleAdapter(LolscanError):
    """The adapter's layers do not match the checkpoint's layer spec."""

    exit_code = EXIT_INCOMPATIBLE


class UsageError(LolscanError):
    exit_code = EXIT_USAGE
