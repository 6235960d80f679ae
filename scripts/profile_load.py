"""Per-file `lolscan.load` time on bench/scan.py's synthetic SD1.5 LoRAs (and a PEFT LLM example).

A profiling aid, not a test: single thread, warm page cache. ::

    PYTHONPATH=$PWD python scripts/profile_load.py --n 100            # timings per style
    PYTHONPATH=$PWD python scripts/profile_load.py --n 100 --profile  # plus the top cProfile entries
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # lolscan itself comes from PYTHONPATH (compare two trees)

import lolscan  # noqa: E402
from scan import generate  # noqa: E402


def per_file_ms(paths: list[Path], repeats: int) -> float:
    """Mean over `paths` of each file's best-of-`repeats` CPU milliseconds in `lolscan.load`
    (CPU time and per-file minima: the dev box is shared, its load comes in bursts)."""
    best = [float("inf")] * len(paths)
    for _ in range(repeats):
        for i, p in enumerate(paths):
            t0 = time.process_time()
            lolscan.load(str(p))
            best[i] = min(best[i], time.process_time() - t0)
    return 1000 * sum(best) / len(best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/lolscan-profile-load"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"lolscan from {Path(lolscan.__file__).parent}")
    files = generate(args.dir, args.n, seed=0)
    kohya, diffusers = files[0::2], files[1::2]
    peft = sorted((ROOT / "models" / "examples").glob("lora-*"))
    for p in files[:2] + peft[:1]:  # warm imports and caches
        lolscan.load(str(p))
    for label, paths in (("kohya", kohya), ("diffusers", diffusers), ("peft-llm", peft)):
        print(f"{label:10} {per_file_ms(paths, args.repeats):7.3f} ms/file ({len(paths)} files)")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for p in files:
            lolscan.load(str(p))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
