"""Shared test helpers: where the real fixtures live, and a tiny trained checkpoint."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script(rel: str):
    """The module of a repository script (``bench/…``, ``scripts/…``), executed afresh in this process (a
    subprocess would import torch again); registered in ``sys.modules`` so its dataclasses work."""
    import importlib.util
    import sys

    path = REPO / rel
    spec = importlib.util.spec_from_file_location(f"lolscan_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_cli_modules(argv: list[str], timeout: float = 120) -> tuple[int, str, set[str]]:
    """Run ``lolscan ARGV`` in a fresh interpreter; its exit code, stderr and the modules it had loaded
    when it exited (typer raises SystemExit after printing, so they are read in an atexit hook)."""
    import json
    import os
    import subprocess
    import sys

    code = ("import sys, json, atexit\n"
            "atexit.register(lambda: print(json.dumps(sorted(sys.modules))))\n"
            f"sys.argv = ['lolscan', *{argv!r}]\n"
            "from lolscan.cli.app import main\n"
            "main()")
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    mods = set(json.loads(out.stdout.strip().splitlines()[-1])) if out.stdout.strip() else set()
    return out.returncode, out.stderr, mods
REAL = REPO.parent / "shared" / "fixtures" / "real"  # ../shared beside the checkout, never copied in


def train_tiny_checkpoint(root: Path, *, seed: int, name: str, out: Path):
    """A GL-net trained in seconds on a synthetic zoo whose labels are known functions of ΔW.

    Returns (zoo folder, dataset, train result, checkpoint path).
    """
    from lolscan.manifest import read_manifest
    from lolscan.training import (
        TrainOptions,
        prepare,
        save_checkpoint,
        train,
        write_synthetic_zoo,
    )

    manifest = write_synthetic_zoo(root / "zoo", n=60, seed=seed)
    ds = prepare(read_manifest(manifest), ["score", "dominant"], progress=False)
    result = train(ds, TrainOptions(arch="glnet", hparams={"d": 4, "hidden": 16}, max_steps=40, progress=False, threads=1))
    return root / "zoo", ds, result, save_checkpoint(ds, result, out, name=name)


class ArenaLog:
    """Names of the shared-memory arenas that scorers in this process create. Leak checks look at
    these, not at all of /dev/shm, which other processes (a second test run, a helper) share."""

    def __init__(self, monkeypatch):
        from lolscan.scan import handoff

        self.names: list[str] = []
        real = handoff.Arena.create.__func__

        def create(cls, slots: int, slot_floats: int):
            arena = real(cls, slots, slot_floats)
            self.names.append(arena.info.name)
            return arena

        monkeypatch.setattr(handoff.Arena, "create", classmethod(create))

    def alive(self) -> set[str]:
        return {n for n in self.names if (Path("/dev/shm") / n).exists()}


def write_recipe_zoo(folder: Path, *, n: int = 120, seed: int = 0) -> Path:
    """`write_synthetic_zoo` plus a training recipe per adapter, drawn independently of its weights
    (lr log-uniform in [1e-5, 1e-2], steps, a random 0/1 source column, …) and a fixed split column.
    Labels: the zoo's own (``score`` = u*ᵀ ΔW₀ v*: the weights only, nothing of the recipe) and
    ``by_lr`` = −(log10 lr + 3.5)², a function of the recipe only (no weight tells it)."""
    import csv
    import math
    import random

    from lolscan.training import write_synthetic_zoo

    manifest = write_synthetic_zoo(folder, n=n, seed=seed)
    rng = random.Random(seed)
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, r in enumerate(rows):
        lr = 10 ** rng.uniform(-5, -2)
        r.pop("group")
        r.update(lr=lr, steps=rng.choice([10, 20]), batch_size=2, dropout=0.0, weight_decay=0.0, rank=4, alpha=8,
                 src_a=rng.randint(0, 1), by_lr=-(math.log10(lr) + 3.5) ** 2,
                 split="test" if i % 4 == 0 else "val" if i % 4 == 1 else "train")
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


def write_noise_zoo(root: Path, *, n: int, seed: int) -> Path:
    """`lolscan.training.write_synthetic_zoo` plus a ``noise`` column (Gaussian, unrelated to the weights: its
    validation loss is lowest at once, so with a second target the two best steps differ); the manifest's path."""
    import csv
    import random

    from lolscan.training import write_synthetic_zoo
    from lolscan.training.synthetic import _write_manifest_csv

    with open(write_synthetic_zoo(root, n=n, seed=seed), newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = random.Random(1)
    for r in rows:
        r["noise"] = f"{rng.gauss(0, 1):.6g}"
    return _write_manifest_csv(root, rows, "noise.csv")
