"""Shared test setup. The helper modules beside the tests (helpers.py, zoo_toy.py, servers/) import
by their plain names from here on, whatever pytest's import mode: no test edits sys.path itself."""
from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

# The source tests' fixtures (sources_env, hub, storage, civitai), found by name in every test module.
pytest_plugins = ["servers.fixtures"]
