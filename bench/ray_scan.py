"""`lolscan predict --engine ray` against the local scan, on the same folder, in one run.

Writes (or reuses) bench/scan.py's folder of SD1.5-shaped LoRAs (128 attention modules, rank 4-8,
fp16, half kohya, half diffusers keys) and its tiny GL-net checkpoint, then measures:

  local        `predict` as `lolscan predict DIR -o local.jsonl` does (wall time, adapters/s)
  ray          the same with engine "ray" and -o ray.jsonl (a shard folder): on a Ray instance started
               before the timer (start-up reported apart), and its ratio to the local scan
  per adapter  the two Ray stages alone, in this process on one core: read and canonicalise
               (`ray_engine._read_one`: header, fit check, factors packed into a slot's layout) and
               score (`ray_engine._ScoreActor` on --device: stack, predict, domain score, gates)

The per-adapter figures are what docs/SCALE_OUT.md extrapolates to 10⁶ adapters. Examples::

    python3 bench/ray_scan.py --n 300 --device cpu --ray-cpus 2
    python3 bench/ray_scan.py --n 8000 --device cuda --json ray_scan_gpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def local_run(files_dir: Path, ckpt: Path, out: Path, device: str, batch_size: int, procs: str) -> dict:
    from lolscan.scan.run import PredictOptions, predict

    t0 = time.perf_counter()
    res = predict(PredictOptions(targets=[str(files_dir)], model=str(ckpt), output=out, out_fmt="jsonl", device=device,
                                 batch_size=batch_size, procs=procs, source_options={}))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "adapters": len(res.rows), "adapters_per_s": len(res.rows) / wall, "rows": res.rows}


def ray_run(files_dir: Path, ckpt: Path, out: Path, device: str, batch_size: int, scorers: int | None,
            read_batch: int) -> dict:
    from lolscan.scan.ray_engine import RayOptions
    from lolscan.scan.run import PredictOptions, predict

    t0 = time.perf_counter()
    res = predict(PredictOptions(targets=[str(files_dir)], model=str(ckpt), output=out, out_fmt="jsonl", device=device,
                                 batch_size=batch_size, source_options={}, engine="ray",
                                 ray=RayOptions(scorers=scorers, read_batch=read_batch)))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "adapters": len(res.rows), "adapters_per_s": len(res.rows) / wall, "rows": res.rows}


def stage_costs(files: list[Path], ckpt: Path, device: str, batch_size: int, k: int) -> dict:
    """Seconds per adapter of the two Ray stages, run here on one core (one thread each)."""
    import pickle

    import numpy as np
    import torch

    from lolscan.checkpoint import load_checkpoint
    from lolscan.scan import ray_engine
    from lolscan.scan.handoff import packed_floats
    from lolscan.scan.lightread import LightReader
    from lolscan.scan.scoring import _Reader

    torch.set_num_threads(1)
    ck = load_checkpoint(str(ckpt))
    rule = ck.fit_rule()
    light = LightReader(rule, [t.name for t in ck.targets])
    full = _Reader(rule, [t.to_json() for t in ck.targets], False, {}, True)
    floats = packed_floats(ck.spec, 16)
    sample = [str(f) for f in files[:k]]
    t0 = time.perf_counter()
    blobs = [pickle.dumps(ray_engine._read_one(s, "", light, full, list(ck.targets), floats), protocol=5) for s in sample]
    read_s = (time.perf_counter() - t0) / len(sample)
    mb_file = sum(os.path.getsize(s) for s in sample) / len(sample) / 1e6
    mb_payload = sum(len(b) for b in blobs) / len(blobs) / 1e6
    actor = ray_engine._ScoreActor(str(ckpt), device, [], 1)
    batches = [blobs[i : i + batch_size] for i in range(0, len(blobs), batch_size)]
    as_batch = [{"idx": np.arange(len(b)), "source": np.array(sample[:len(b)], dtype=object), "item": np.array(b, dtype=object)}
                for b in batches]
    actor(as_batch[0])  # warm-up (kernels, buffers)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in as_batch:
        actor(b)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    score_s = (time.perf_counter() - t0) / len(sample)
    return {"sample": len(sample), "read_ms_per_adapter": 1e3 * read_s, "score_ms_per_adapter": 1e3 * score_s,
            "file_mb": mb_file, "payload_mb": mb_payload}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="number of LoRA files")
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "lolscan-scan-bench")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the local scan and the scoring actors)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--procs", default="auto", help="the local scan's reader processes (as `lolscan predict --procs`)")
    ap.add_argument("--ray-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    ap.add_argument("--scorers", type=int, help="scoring actors (default: one per GPU, else 1)")
    ap.add_argument("--read-batch", type=int, default=32, help="adapters per Ray read task batch")
    ap.add_argument("--sample", type=int, default=96, help="adapters timed in the per-stage measurement")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--no-ray", action="store_true", help="the local scan and the per-adapter costs only (a machine without Ray)")
    args = ap.parse_args()

    from scan import generate, make_checkpoint  # bench/scan.py: the same folder and checkpoint

    files = generate(args.dir, args.n, seed=0)
    ckpt = make_checkpoint(args.dir, files, "cpu")
    files_dir = files[0].parent
    if len(list(files_dir.glob("*.safetensors"))) != args.n:
        raise SystemExit(f"{files_dir} holds other files than the bench's {args.n}: use another --dir")
    runs = args.dir / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)

    ray_start, on_ray = None, None
    if not args.no_ray:
        import ray

        t0 = time.perf_counter()
        here = str(Path(__file__).resolve().parent.parent)
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in [here, os.environ.get("PYTHONPATH", "")] if p)}})
        ray_start = time.perf_counter() - t0
    local = local_run(files_dir, ckpt, runs / "local.jsonl", args.device, args.batch_size, args.procs)
    local_rows = local.pop("rows")
    same = None
    if not args.no_ray:
        on_ray = ray_run(files_dir, ckpt, runs / "ray.jsonl", args.device, args.batch_size, args.scorers, args.read_batch)
        ray.shutdown()
        same = {r["source"]: r["status"] for r in local_rows} == {r["source"]: r["status"] for r in on_ray.pop("rows")}
    costs = stage_costs(files, ckpt, args.device, args.batch_size, min(args.sample, len(files)))

    out = {"n": args.n, "device": args.device, "cpus": os.cpu_count(), "machine": platform.node(),
           "ray_cpus": args.ray_cpus, "ray_start_s": ray_start, "local": local, "ray": on_ray,
           "ray_over_local": on_ray["adapters_per_s"] / local["adapters_per_s"] if on_ray else None,
           "same_sources_and_status": same, "per_adapter": costs}
    if args.device.startswith("cuda"):
        import torch

        out["gpu"] = torch.cuda.get_device_name()
    print(f"{args.n} SD1.5-shaped LoRAs, device {args.device} ({out.get('gpu', 'no GPU')}), {os.cpu_count()} cores"
          + (f"; Ray started in {ray_start:.1f} s (not timed below)" if on_ray else "; Ray not run"))
    print(f"local scan : {local['wall_s']:7.2f} s  {local['adapters_per_s']:8.1f} adapters/s")
    if on_ray:
        print(f"ray scan   : {on_ray['wall_s']:7.2f} s  {on_ray['adapters_per_s']:8.1f} adapters/s  "
              f"({out['ray_over_local']:.2f}× the local scan; same rows: {same})")
    print(f"per adapter: read+canonicalise {costs['read_ms_per_adapter']:.2f} ms (1 core, {costs['file_mb']:.2f} MB file, "
          f"{costs['payload_mb']:.2f} MB to the scorer), score {costs['score_ms_per_adapter']:.2f} ms ({args.device}, 1 thread)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
