"""LoRAs per minute of `lolscan zoo build` with 1 process against N (`--nproc N`), in one run, and whether
every build wrote the same zoo (manifest, zoo.json and adapter files, byte for byte).

Each build is the real command in a fresh folder. Two figures per build: end to end (interpreters, model
load, base-model labels and all) and the groups alone (the slowest rank's summed group times, read from its
log: what a long build converges to). Usage:

    python3 bench/zoo_ranks.py --toy --nproc 1 2                           # CPU, tiny random model
    python3 bench/zoo_ranks.py RECIPE --device cuda:0 --nproc 1 2 4 --n-loras 256   # N ranks on one GPU
    python3 bench/zoo_ranks.py RECIPE --device cuda --nproc 1 2 4 8        # one GPU per rank (scaling run)

``--toy`` writes the tests' tiny random Llama, toy data and a recipe into the work folder (48 LoRAs in groups
of 8, 20-40 steps each unless ``--n-loras``, ``--group-size``, ``--toy-steps`` say otherwise). ``--threads`` sets OMP_NUM_THREADS for every process (default: unset, so
``--nproc`` gives each rank cores // N; on CPU, builds are byte-identical only at equal threads per process).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUP = re.compile(r"^(?:\[rank (\d+)\] )?group \d+: (\d+) adapters .*? train ([\d.]+)s label ([\d.]+)s write ([\d.]+)s")


def toy(folder: Path, n_loras: int, group_size: int, steps: list[int]) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from zoo_toy import recipe_toml, save_tiny_hf_base, toy_recipe, write_toy_data

    write_toy_data(folder / "data")
    save_tiny_hf_base(folder / "base")
    d = toy_recipe(folder / "data", n_loras=n_loras, group_size=group_size)
    d["base"] = {"path": str(folder / "base"), "name": "tiny-llama", "dtype": "float32"}
    d["hparams"]["dropout"] = {"choice": [0.0, 0.1]}
    d["hparams"]["steps"] = {"int_uniform": steps}
    (folder / "toy.toml").write_text(recipe_toml(d))
    return folder / "toy.toml"


def digest(zoo: Path) -> str:
    """One hash over every file of the zoo (names and bytes)."""
    h = hashlib.sha256()
    for p in sorted(zoo.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(zoo)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def run(recipe: Path, out: Path, nproc: int, extra: list[str], env: dict) -> dict:
    cmd = [sys.executable, "-m", "lolscan", "zoo", "build", str(recipe), str(out), *extra]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"nproc {nproc}: exit {res.returncode}\n{res.stderr[-3000:]}")
    per_rank: dict[int, float] = {}
    adapters = 0
    for line in res.stderr.splitlines():
        m = GROUP.match(line.strip())
        if m:
            r = int(m.group(1) or 0)
            per_rank[r] = per_rank.get(r, 0.0) + sum(float(m.group(i)) for i in (3, 4, 5))
            adapters += int(m.group(2))
    rows = len((out / "manifest.jsonl").read_text().splitlines())
    groups_s = max(per_rank.values()) if per_rank else float("nan")
    return {"nproc": nproc, "adapters": rows, "adapters_in_logs": adapters, "wall_s": wall,
            "loras_per_min": 60 * rows / wall, "groups_s": groups_s, "groups_loras_per_min": 60 * rows / groups_s,
            "group_s_per_rank": per_rank, "zoo_sha256": digest(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", help="recipe TOML (or --toy)")
    ap.add_argument("--toy", action="store_true", help="the tests' tiny random model and toy data")
    ap.add_argument("--toy-steps", type=int, nargs=2, default=[20, 40], metavar=("MIN", "MAX"),
                    help="--toy: training steps per adapter, drawn uniformly")
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-loras", type=int, default=None)
    ap.add_argument("--group-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every process")
    ap.add_argument("--work", default=None, help="folder for the zoos (default: a temporary one)")
    ap.add_argument("--json", default=None)
    ap.add_argument("build_args", nargs=argparse.REMAINDER, help="after --: more `zoo build` options")
    a = ap.parse_args()
    if not a.toy and not a.recipe:
        ap.error("give a recipe or --toy")
    work = Path(a.work or tempfile.mkdtemp(prefix="zoo_ranks_"))
    work.mkdir(parents=True, exist_ok=True)
    recipe = toy(work / "toy", a.n_loras or 48, a.group_size or 8, a.toy_steps) if a.toy else Path(a.recipe)
    extra = ["--device", a.device] + [x for x in a.build_args if x != "--"]
    if not a.toy:
        extra += ["--n-loras", str(a.n_loras)] if a.n_loras else []
        extra += ["--group-size", str(a.group_size)] if a.group_size else []
    env = {**os.environ, "COLUMNS": "400"}  # log lines unwrapped, for the group times
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    results = []
    for n in a.nproc:
        r = run(recipe, work / f"zoo-{n}", n, extra, env)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "group_s_per_rank"}), flush=True)
    first = results[0]
    print(f"\n{'nproc':>5} {'adapters':>8} {'wall s':>8} {'LoRAs/min':>10} {'× 1st':>6} "
          f"{'groups s':>9} {'LoRAs/min':>10} {'× 1st':>6}  same zoo as the 1st")
    for r in results:
        print(f"{r['nproc']:>5} {r['adapters']:>8} {r['wall_s']:>8.1f} {r['loras_per_min']:>10.1f} "
              f"{r['loras_per_min'] / first['loras_per_min']:>6.2f} {r['groups_s']:>9.1f} "
              f"{r['groups_loras_per_min']:>10.1f} {r['groups_loras_per_min'] / first['groups_loras_per_min']:>6.2f}"
              f"  {'yes' if r['zoo_sha256'] == first['zoo_sha256'] else 'NO'}")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": a.device, "recipe": str(recipe), "threads": a.threads,
                                            "results": results}, indent=1))


if __name__ == "__main__":
    main()
