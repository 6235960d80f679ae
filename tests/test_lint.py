"""`ruff check` with the repository's settings (pyproject.toml, `[tool.ruff.lint]`: pyflakes and syntax
errors) finds nothing in lolscan/, bench/, scripts/ or tests/: an undefined name is a crash waiting on the
branch that reaches it, and lazy imports make such branches common here."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_no_undefined_names_unused_imports_or_syntax_errors():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                        "lolscan", "bench", "scripts", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
