"""Start-up time of the `lolscan` commands a person runs first, in fresh processes.

    python bench/cli_startup.py --repeats 7 --out bench/results/cli_startup.md
    python bench/cli_startup.py --repeats 7 --baseline <tree of git archive OLD lolscan models>

With ``--baseline TREE`` every command also runs in that tree, alternating run by run with the timed
tree (baseline, timed, baseline, …), so both see the same load on a shared machine; the table gains
the baseline's median and the ratio of the medians. Every row also gives the median CPU time (user +
system of the child), which neighbours on a shared machine disturb far less than the wall time.

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
import resource
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


CPU: dict[tuple[str, ...], list[float]] = {}  # (tree, *argv) -> CPU seconds (user + system) of each timed run


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall seconds of one run; its CPU seconds (user + system of the child) go to `CPU`: on a shared
    machine the wall time mostly measures the neighbours, the CPU time the work the command does."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.setdefault((str(cwd), *argv), []).append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--machine", default="2-core CPU dev machine")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--repo", type=Path, default=REPO, help="tree to time (e.g. an exported older commit)")
    ap.add_argument("--baseline", type=Path, default=None, help="another tree timed in alternation with --repo")
    args = ap.parse_args()
    trees = [args.repo] + ([args.baseline] if args.baseline else [])
    envs = [{**os.environ, "PYTHONPATH": str(t), "COLUMNS": "100"} for t in trees]
    rows, base_rows = [], []
    for label, argv in COMMANDS:
        argv = [str(REPO / a) if a == EXAMPLE else a for a in argv]
        runs: list[list[float]] = [[] for _ in trees]
        for env, tree in zip(envs, trees):
            timed(argv, env, tree)  # warm the page cache once
        for _ in range(args.repeats):
            for i in reversed(range(len(trees))):  # the baseline first, then the timed tree
                runs[i].append(timed(argv, env=envs[i], cwd=trees[i]))
        times = sorted(runs[0])
        cpu = [statistics.median(CPU[(str(t), *argv)][1:]) for t in trees]  # [0]: the warm-up run
        rows.append((label, statistics.median(times), times[0], cpu[0]))
        if args.baseline:
            base_rows.append((statistics.median(runs[1]), cpu[1]))
    bare = rows[0][1]
    flags = ('' if args.repo == REPO else f' --repo {args.repo}') + (f' --baseline {args.baseline}' if args.baseline else '')
    lines = [
        f"# `lolscan` start-up time ({args.machine})",
        "",
        f"`python bench/cli_startup.py --repeats {args.repeats}{flags}` — Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, fresh process per run, median of {args.repeats} (after one warm-up run)"
        + (", alternating with the baseline tree." if args.baseline else "."),
        "",
    ]
    if args.baseline:
        lines += ["| command | median (s) | fastest (s) | × bare python | CPU median (s) | baseline median (s) | baseline CPU (s) | ÷ baseline (wall, CPU) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| `{label}` | {med:.3f} | {best:.3f} | {med / bare:.1f} | {cpu:.3f} | {base:.3f} | {base_cpu:.3f} | {med / base:.2f}, {cpu / base_cpu:.2f} |"
                  for (label, med, best, cpu), (base, base_cpu) in zip(rows, base_rows)]
    else:
        lines += ["| command | median (s) | fastest (s) | × bare python | CPU median (s) |", "|---|---:|---:|---:|---:|"]
        lines += [f"| `{label}` | {med:.3f} | {best:.3f} | {med / bare:.1f} | {cpu:.3f} |" for label, med, best, cpu in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
