"""The bundled checkpoints travel with the package: in a built wheel, and found there by `bundled_dir`."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers import REPO

import lolscan
from lolscan.checkpoint import bundled_dir

CHECKPOINTS = sorted(p.parent.name for p in (REPO / "models").glob("*/card.json"))


def test_bundled_dir_prefers_the_package_data_of_an_installed_wheel(tmp_path, monkeypatch):
    monkeypatch.delenv("LOLSCAN_MODELS_DIR", raising=False)
    pkg = tmp_path / "site-packages" / "lolscan"
    pkg.mkdir(parents=True)
    monkeypatch.setattr(lolscan, "__file__", str(pkg / "__init__.py"))
    assert bundled_dir() == (tmp_path / "site-packages" / "models").resolve()  # no package data: the checkout's folder
    (pkg / "_models").mkdir()
    assert bundled_dir() == (pkg / "_models").resolve()


def test_bundled_dir_in_a_checkout_holds_the_default_checkpoint(monkeypatch):
    monkeypatch.delenv("LOLSCAN_MODELS_DIR", raising=False)
    assert (bundled_dir() / "smollm2-val-loss" / "card.json").is_file()


def _ignore(dirpath: str, names: list[str]) -> set[str]:
    return {n for n in names if n in (".git", "build", "dist", "__pycache__", ".pytest_cache", ".benchmarks")
            or n.endswith(".egg-info")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """A wheel built from a copy of the checkout (so the build leaves nothing in it)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=_ignore)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(root / "dist")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (whl,) = (root / "dist").glob("lolscan-*.whl")
    return zipfile.ZipFile(whl)


def test_wheel_carries_every_bundled_checkpoint_and_no_example_loras(wheel):
    names = set(wheel.namelist())
    assert CHECKPOINTS and "smollm2-val-loss" in CHECKPOINTS
    for ck in CHECKPOINTS:
        files = sorted(p for p in (REPO / "models" / ck).iterdir() if p.is_file())
        weights = [p.name for p in files if p.name == "model.safetensors" or p.name.startswith("model-")]
        assert "card.json" in [p.name for p in files] and weights, (ck, files)  # one file, or shards with their index
        for p in files:  # every file of the folder, the weights' shards and index included, at its size
            assert wheel.getinfo(f"lolscan/_models/{ck}/{p.name}").file_size == p.stat().st_size, (ck, p.name)
    assert not [n for n in names if n.startswith("lolscan/_models/examples")]


def test_wheel_carries_every_module_of_the_package(wheel):
    names = set(wheel.namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "lolscan").rglob("*.py")}
    assert modules and not (modules - names)
    entry = wheel.read([n for n in names if n.endswith("entry_points.txt")][0]).decode()
    assert re.search(r"lolscan\s*=\s*lolscan\.cli\.app:main", entry)


def test_ci_runs_exactly_the_quickstart_test_command_then_the_wheel_check():
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", quick, re.S)
    assert len(blocks) == 2  # two set-up commands, no more
    test_cmd = blocks[1].strip()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    run = [line for line in ci if line.strip() and not line.startswith("#")]
    assert test_cmd.replace("pip install", "python3 -m pip install -q") in run
    assert run.index(test_cmd.replace("pip install", "python3 -m pip install -q")) < run.index(".ci/wheel-check")


def test_base_install_needs_no_peft_and_reading_a_peft_adapter_imports_none():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = [d.split(">")[0].split("<")[0].split("=")[0].strip().lower() for d in project["dependencies"]]
    assert "peft" not in base and "transformers" not in base
    assert any(d.startswith("peft") for d in project["optional-dependencies"]["zoo"])
    assert any(d.startswith("peft") for d in project["optional-dependencies"]["test"])
    code = ("import sys, lolscan; a = lolscan.load(sys.argv[1]); assert len(a) > 0; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('peft', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "models" / "examples" / "lora-00553")],
                         capture_output=True, text=True, cwd=REPO, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
