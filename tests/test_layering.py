"""Imports only go down the layers (in the manner of huggingface_hub's utils/check_imports.py).

    core → sources → formats → adapter → nets → checkpoint → scan / training / zoo → cli

Every module under lolscan/ is parsed with `ast`; every import of a lolscan module, at the top of a
file or inside a function (the lazy imports count: they run too), must name a module of the same
layer or a lower one. A module that no layer lists fails the test, so a new file is placed on purpose.
docs/ARCHITECTURE.md draws the same diagram.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lolscan"

# Lowest first. A module is named by its dotted path; a name ending in ".*" covers a whole subpackage.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # what every layer shares: exceptions and exit codes, the canonical Adapter type (it imports
    # nothing of lolscan), target kinds and their normalisation, files/progress/version helpers
    ("core", ("lolscan._version", "lolscan.errors", "lolscan.adapter", "lolscan.targets", "lolscan.utils.*")),
    # where adapter bytes come from: local paths, the Hugging Face Hub, Civitai, the download cache
    ("sources", ("lolscan.sources.*",)),
    # key schemes and file readers: safetensors headers, tensor files, one module per format
    ("formats", ("lolscan.formats.*",)),
    # the public entry point: lolscan.load(target) → Adapter
    ("adapter", ("lolscan",)),
    # metanetworks, their training metrics, calibration of their outputs and the honest comparisons
    # (hyperparameter-only baselines, paired bootstrap CIs; numpy only) (the rest of
    # lolscan.evaluation — the self-test and `lolscan eval`'s run — sits with the apps)
    ("nets", ("lolscan.nets.*", "lolscan.evaluation", "lolscan.evaluation.calibration", "lolscan.evaluation.metrics",
              "lolscan.evaluation.compare")),
    # trained checkpoints: cards, files, compatibility with an adapter
    ("checkpoint", ("lolscan.checkpoint.*",)),
    # what the commands do: the streaming scan with its reports and gates (lolscan.scan.ray_engine, the scan
    # on Ray, included), training, evaluation, zoo building, inspection
    ("apps", ("lolscan.scan.*", "lolscan.manifest", "lolscan.baseline", "lolscan.inspection", "lolscan.inspect_fast", "lolscan.training.*",
              "lolscan.training_run", "lolscan.evaluation.*", "lolscan.zoo.*")),
    # the command line: parse → call → render
    ("cli", ("lolscan.cli.*", "lolscan.__main__")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for i, (_, names) in enumerate(LAYERS):
        for name in names:
            if name.endswith(".*"):
                prefix = name[:-2]
                hit = module == prefix or module.startswith(prefix + ".")
                length = len(prefix)
            else:
                hit, length = module == name, len(name)
            if hit and length > best_len:
                best, best_len = i, length
    return best


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, lolscan module) for every import in the file, top-level or not. ``from X import Y``
    counts as importing X.Y when X.Y is a module of ours, else as importing X."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "lolscan"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "lolscan":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if is_module(sub) else target))
    return found


def is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    unmapped = [m for m in all_modules() if layer_of(m) is None]
    assert not unmapped, f"add these modules to a layer in tests/test_layering.py: {unmapped}"


def test_imports_only_go_down():
    bad = []
    for module, path in all_modules().items():
        mine = layer_of(module)
        if mine is None:
            continue
        for line, imported in imported_modules(path, module):
            theirs = layer_of(imported)
            if theirs is None or theirs > mine:
                where = LAYERS[theirs][0] if theirs is not None else "no layer"
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} ({LAYERS[mine][0]}) imports {imported} ({where})")
    assert not bad, "imports that reach up a layer:\n" + "\n".join(bad)


def test_only_the_cli_imports_the_cli():
    bad = [f"{module} imports {imported}" for module, path in all_modules().items()
           if not (module.startswith("lolscan.cli") or module == "lolscan.__main__")
           for _, imported in imported_modules(path, module)
           if imported == "lolscan.cli" or imported.startswith("lolscan.cli.")]
    assert not bad, bad


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    """The parser itself: a function-level relative import is found and resolved."""
    pkg = tmp_path / "lolscan" / "sub"
    pkg.mkdir(parents=True)
    src = pkg / "mod.py"
    src.write_text("def f():\n    from ..cli.console import err_console\n    from . import other\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "lolscan"
    try:
        (tmp_path / "lolscan" / "cli").mkdir()
        (tmp_path / "lolscan" / "cli" / "console.py").write_text("")
        got = imported_modules(src, "lolscan.sub.mod")
    finally:
        PACKAGE = saved
    assert got == [(2, "lolscan.cli.console"), (3, "lolscan.sub")]
