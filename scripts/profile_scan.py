"""Where a folder scan spends its time: per-stage wall time (`Scorer.timings`) and CPU time per thread
of the scoring process (main, assemble, predict) and of its reader processes, on bench/scan.py's
synthetic SD1.5 LoRAs (warm page cache). A profiling aid, not a test::

    PYTHONPATH=$PWD python scripts/profile_scan.py --n 400 --procs 2
    PYTHONPATH=$PWD python scripts/profile_scan.py --n 400 --procs 2 --profile   # + cProfile of the stage threads

Works with older trees too (no stage threads: their rows stay empty).
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # lolscan itself comes from PYTHONPATH (compare two trees)


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's live threads, by thread name."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for t in threading.enumerate():
        try:
            fields = Path(f"/proc/self/task/{t.native_id}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, TypeError):
            continue
        name = t.name.split("_")[0].rstrip("0123456789-")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "lolscan-scan-bench")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--start-method", default="auto")
    ap.add_argument("--profile", action="store_true", help="cProfile the stage threads (or the main thread)")
    args = ap.parse_args()

    import lolscan
    from lolscan.checkpoint import load_checkpoint
    from lolscan.scan.discovery import expand
    from lolscan.scan.scoring import Scorer, ScoreOptions
    from scan import generate, make_checkpoint

    print(f"lolscan from {Path(lolscan.__file__).parent}", file=sys.stderr)
    files = generate(args.dir, args.n, seed=0)
    ckpt = load_checkpoint(make_checkpoint(args.dir, files, args.device), device=args.device)
    found = [f for f in expand([str(args.dir / "loras")])][: args.n]
    for f in found:  # warm the page cache: this measures CPU, not the disk
        Path(f.source).read_bytes()
    profs = _profile_stages() if args.profile else {}
    scorer = Scorer(ckpt, ScoreOptions(batch_size=args.batch_size, workers=args.workers, processes=args.procs,
                                       start_method=args.start_method))
    t0, kids0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN), thread_cpu()
    cpu: dict[str, float] = {}
    rows = 0
    for _ in scorer.score(found):
        rows += 1
        if rows == len(found):  # the stage threads are still alive: read their CPU time now
            cpu = {k: v - cpu0.get(k, 0.0) for k, v in thread_cpu().items()}
    wall = time.perf_counter() - t0
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    n = len(found)
    print(f"{n} adapters in {wall:.2f} s: {n / wall:.1f} adapters/s ({args.procs} reader processes, batch {args.batch_size}, {args.device})")
    print("wall ms per adapter, by stage:  " + "  ".join(f"{k} {1000 * v / n:.2f}" for k, v in scorer.timings.items()))
    readers = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    print("CPU ms per adapter, by thread:  " + "  ".join(f"{k} {1000 * v / n:.2f}" for k, v in sorted(cpu.items()))
          + f"  reader processes {1000 * readers / n:.2f} (fork-server readers are not counted)")
    for name, prof in profs.items():
        print(f"\n--- {name} thread")
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def _profile_stages() -> dict[str, cProfile.Profile]:
    """One profiler per stage function, each called from its own thread only (cProfile is per thread)."""
    try:
        from lolscan.scan import stages
    except ImportError:
        return {}
    profs = {"assemble": cProfile.Profile(), "predict": cProfile.Profile()}

    def profiled(fn, prof):
        return lambda *a, **k: prof.runcall(fn, *a, **k)

    stages.Stages._assemble = profiled(stages.Stages._assemble, profs["assemble"])
    stages.Stages._predict = profiled(stages.Stages._predict, profs["predict"])
    return profs


if __name__ == "__main__":
    main()
