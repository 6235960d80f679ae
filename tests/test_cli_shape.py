"""The command line is parse → call → render (issue 20): no function under lolscan/cli/ is longer than
80 lines; the work itself (resume, streaming, gates, training every architecture, evaluation) lives in
the library, where it is tested without the CLI."""
from __future__ import annotations

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parents[1] / "lolscan" / "cli"
MAX_LINES = 80


def test_no_cli_function_is_over_80_lines():
    long = []
    for path in sorted(CLI.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(CLI.parents[1])}:{node.lineno}: {node.name} is {lines} lines")
    assert not long, f"functions in lolscan/cli/ over {MAX_LINES} lines (move the work into the library):\n" + "\n".join(long)
