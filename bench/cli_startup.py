"""Start-up time of the `lolscan` commands a person runs first, in fresh processes.

    python bench/cli_startup.py --repeats 7 --out bench/results/cli_startup.md

Each command runs ``--repeats`` times as ``python -m lolscan …`` in the repository (or ``--repo``; the
working directory and PYTHONPATH are that tree), stdout and stderr discarded; the median and the fastest wall time are reported, next to a bare
``python -c pass`` and ``python -c "import torch"`` on the same machine, and as a ratio to the bare
interpreter. The target is under 0.5 s for ``--help`` and ``--version``, and for ``inspect`` of a plain
LoRA file (the example below), which `lolscan.inspect_fast` reads without torch.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = "models/examples/lora-00553"  # a plain PEFT LoRA (rank-4 k/v of SmolLM2-135M): inspected without torch
COMMANDS = [
    ("python -c pass", [sys.executable, "-c", "pass"]),
    ('python -c "import torch"', [sys.executable, "-c", "import torch"]),
    ("lolscan --help", [sys.executable, "-m", "lolscan", "--help"]),
    ("lolscan --version", [sys.executable, "-m", "lolscan", "--version"]),
    ("lolscan models", [sys.executable, "-m", "lolscan", "models"]),
    ("lolscan predict --help", [sys.executable, "-m", "lolscan", "predict", "--help"]),
    (f"lolscan inspect {EXAMPLE}", [sys.executable, "-m", "lolscan", "inspect", EXAMPLE]),
]


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--machine", default="2-core CPU dev machine")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--repo", type=Path, default=REPO, help="tree to time (e.g. an exported older commit)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.repo), "COLUMNS": "100"}
    rows = []
    for label, argv in COMMANDS:
        argv = [str(REPO / a) if a == EXAMPLE else a for a in argv]
        timed(argv, env, args.repo)  # warm the page cache once
        times = sorted(timed(argv, env, args.repo) for _ in range(args.repeats))
        rows.append((label, statistics.median(times), times[0]))
    bare = rows[0][1]
    lines = [
        f"# `lolscan` start-up time ({args.machine})",
        "",
        f"`python bench/cli_startup.py --repeats {args.repeats}`{'' if args.repo == REPO else f' --repo {args.repo}'} — Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, fresh process per run, median of {args.repeats} (after one warm-up run).",
        "",
        "| command | median (s) | fastest (s) | × bare python |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| `{label}` | {med:.3f} | {best:.3f} | {med / bare:.1f} |" for label, med, best in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
