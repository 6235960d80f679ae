"""Errors that map onto lolscan's documented exit codes.

Exit codes: 0 ok, 1 a CI gate failed, 2 usage error, 3 unreadable or unsupported
input (or an adapter holding NaN/Inf values, in `inspect` and `predict` unless --allow-nonfinite),
4 adapter does not fit the chosen checkpoint.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_INCOMPATIBLE = 4


MAX_MESSAGE = 400  # characters of a message (a hostile file's 100 KB key must not fill the terminal)
MAX_NAME = 200  # characters of a path or a tensor/module name inside a message


def elide(text: str, limit: int = MAX_NAME) -> str:
    """``text`` on one line, printable whatever its code points (lone surrogates become escapes), and
    at most ``limit`` characters: a longer one keeps its start and end around an ellipsis."""
    text = str(text)
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\n" in text or "\r" in text:
        text = text.replace("\r", " ").replace("\n", " ")
    if len(text) > limit:
        keep = max(limit - 1, 2)
        text = text[: keep - keep // 3] + "…" + text[len(text) - keep // 3 :]
    return text


def nonfinite_text(names: list[str]) -> str:
    """What is wrong with an adapter whose factors hold NaN/Inf values, naming up to three modules."""
    shown = ", ".join(elide(n, 80) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{len(names)} module(s) hold NaN/Inf values ({shown})"


def quoted(name: object, limit: int = MAX_NAME) -> str:
    """A tensor or module name for a message: ``repr``-quoted and elided."""
    return repr(elide(str(name), limit))


class LolscanError(Exception):
    """Base class: carries a one-line message and the process exit code.

    The path and the message are made printable (see `elide`) and capped in length."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, path: object | None = None):
        self.path = None if path is None else str(path)
        message = elide(message, MAX_MESSAGE)
        super().__init__(f"{elide(self.path)}: {message}" if self.path else message)


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


class MissingExtras(LolscanError):
    """An optional dependency of the command is not installed: exit 3, naming the install command."""

    exit_code = EXIT_BAD_INPUT
