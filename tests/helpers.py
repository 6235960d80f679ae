"""Shared test helpers: where the real fixtures live, and a tiny trained checkpoint."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
    from lolscan.training import TrainOptions, prepare, save_checkpoint, train, write_synthetic_zoo

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
