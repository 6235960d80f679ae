"""End-to-end folder scoring throughput vs the raw read throughput of the same files.

Writes a folder of synthetic SD1.5-shaped LoRAs (the 128 attention modules to_q/k/v/out.0 of
attn1/attn2 in the 16 UNet transformers, rank 4-8, fp16; half kohya ``lora_unet_…`` keys with
alphas, half diffusers PEFT-style ``unet.….lora_A/B`` keys), trains a tiny GL-net checkpoint on a
few of them, then measures with a cold page cache (posix_fadvise DONTNEED before each run):

  raw read   every file read start to end by the same number of threads (the I/O limit)
  scan       lolscan's streaming scorer: discovery, parse, fit check, batch, score, JSONL rows

and the same two with a warm cache (CPU cost only). torch is imported inside functions only: reader
processes started by a fork server (or spawned) re-run this script's top level. Example (CPU)::

    python bench/scan.py --n 3000 --workers 4 --device cpu
    python bench/scan.py --n 3000 --device cuda --json results.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# SD1.5 UNet transformers: (diffusers block path, channels); attn2 k/v read CLIP-L (768).
SD15_TRANSFORMERS = (
    [(f"down_blocks.{b}.attentions.{a}", c) for b, c in ((0, 320), (1, 640), (2, 1280)) for a in (0, 1)]
    + [("mid_block.attentions.0", 1280)]
    + [(f"up_blocks.{b}.attentions.{a}", c) for b, c in ((1, 1280), (2, 640), (3, 320)) for a in (0, 1, 2)]
)


def sd15_attention_modules() -> list[tuple[str, int, int]]:
    """(diffusers module path, out, in) for the 128 attention projections."""
    mods = []
    for block, c in SD15_TRANSFORMERS:
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                m = 768 if attn == "attn2" and proj in ("to_k", "to_v") else c
                mods.append((f"{block}.transformer_blocks.0.{attn}.{proj}", c, m))
    assert len(mods) == 128
    return mods


def write_lora(path: Path, rank: int, style: str, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, "torch.Tensor"] = {}
    alpha = float(rank)  # kohya default alpha = rank (scale 1)
    for name, n, m in sd15_attention_modules():
        down = (torch.randn(rank, m, generator=g) / math.sqrt(m)).half()
        up = (torch.randn(n, rank, generator=g) * 0.01).half()
        if style == "kohya":
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = down
            tensors[f"{key}.lora_up.weight"] = up
            tensors[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
        else:
            tensors[f"unet.{name}.lora_A.weight"] = down
            tensors[f"unet.{name}.lora_B.weight"] = up
    meta = {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1"} if style == "kohya" else {"format": "pt"}
    save_file(tensors, str(path), metadata=meta)


def _write_one(job: tuple[Path, int, str, int]) -> None:
    import torch

    torch.set_num_threads(1)
    write_lora(*job)


def generate(folder: Path, n: int, seed: int) -> list[Path]:
    """The bench's files (written in parallel; each file's content depends only on its index)."""
    stamp = folder / "params.json"
    params = {"n": n, "seed": seed, "version": 1}
    files = [folder / "loras" / f"{i:05d}.safetensors" for i in range(n)]
    if stamp.is_file() and json.loads(stamp.read_text()) == params and all(f.is_file() for f in files):
        return files
    (folder / "loras").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    jobs = [(f, rng.randint(4, 8), "kohya" if i % 2 == 0 else "diffusers", seed * 1_000_003 + i) for i, f in enumerate(files)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        for i, _ in enumerate(pool.map(_write_one, jobs, chunksize=16)):
            if (i + 1) % 500 == 0:
                print(f"  wrote {i + 1}/{n} files ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    os.sync()
    stamp.write_text(json.dumps(params))
    return files


def make_checkpoint(folder: Path, files: list[Path], device: str) -> Path:
    """A small GL-net trained for a few steps on 64 of the files (label: ‖ΔW‖ of one module)."""
    import lolscan
    from lolscan.manifest import read_manifest
    from lolscan.training import TrainOptions, prepare, save_checkpoint, train

    ckpt = folder / "ckpt"
    if (ckpt / "card.json").is_file():
        return ckpt
    rows = ["path,norm"]
    for f in files[:64]:
        a = lolscan.load(str(f))
        rows.append(f"{f},{a['unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q'].frobenius_norm():.6g}")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    ds = prepare(read_manifest(folder / "train.csv"), ["norm"], progress=False, base_model="sd1")
    result = train(ds, TrainOptions(arch="glnet", hparams={"d": 8}, max_steps=30, device=device, progress=False))
    return save_checkpoint(ds, result, ckpt, name="scan-bench", overwrite=True)


def drop_cache(files: list[Path]) -> None:
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read(files: list[Path], workers: int) -> float:
    def read(f: Path) -> int:
        buf = bytearray(8 << 20)
        total = 0
        with open(f, "rb", buffering=0) as fh:
            while True:
                k = fh.readinto(buf)
                if not k:
                    return total
                total += k

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(read, files))
    return time.perf_counter() - t0


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (reader processes started by
    fork or spawn; readers forked by a fork server are the server's children and are not counted)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def scan(folder: Path, ckpt_path: Path, workers: int, batch_size: int, device: str, processes: int = 0,
         shm_budget: int | None = None, start_method: str = "auto", prestart: bool = True) -> tuple[float, int, dict[str, float]]:
    """(seconds, adapters scored, main-thread seconds per stage + CPU seconds of all processes).
    With ``prestart`` (and processes) the readers start before the checkpoint loads, as in `lolscan predict`."""
    from lolscan.scan import scoring
    from lolscan.checkpoint import load_checkpoint
    from lolscan.scan.discovery import expand
    from lolscan.scan.report import jsonl_line
    from lolscan.scan.scoring import Scorer, ScoreOptions

    t0 = time.perf_counter()
    c0 = cpu_seconds()
    readers = scoring.ReaderPool(processes, start_method) if prestart and processes > 0 and hasattr(scoring, "ReaderPool") else None
    ckpt = load_checkpoint(ckpt_path, device=device)
    ok = 0
    opts = ScoreOptions(batch_size=batch_size, workers=workers, processes=processes, start_method=start_method)
    if shm_budget is not None:
        opts.shm_budget = shm_budget
    scorer = Scorer(ckpt, opts, readers=readers) if readers is not None else Scorer(ckpt, opts)
    first = 0.0
    with open(os.devnull, "w") as sink:
        for row in scorer.score(expand([str(folder / "loras")])):
            first = first or time.perf_counter() - t0
            sink.write(jsonl_line(row))
            ok += row["status"] == "ok"
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return time.perf_counter() - t0, ok, {**scorer.timings, "cpu": cpu_seconds() - c0, "first_row_s": first, "handoff": scorer.handoff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="number of LoRA files")
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "lolscan-scan-bench")
    ap.add_argument("--workers", type=int, default=4, help="reader threads (same for raw read and scan)")
    ap.add_argument("--procs", default="0", help="reader processes for the scan (0: threads only; auto: as `lolscan predict`)")
    ap.add_argument("--start-method", default="auto", choices=["auto", "fork", "forkserver", "spawn"], help="how reader processes start")
    ap.add_argument("--no-prestart", action="store_true", help="start reader processes after the checkpoint loads (as before ReaderPool)")
    ap.add_argument("--shm-budget", type=int, help="bytes of shared memory for the hand-off (0: pickle, as before it)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", help="cuda where there is one, else cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--no-warm", action="store_true", help="skip the warm-cache runs")
    args = ap.parse_args()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    from lolscan.scan.scoring import auto_processes

    procs = auto_processes(args.n) if args.procs == "auto" else int(args.procs)
    files = generate(args.dir, args.n, args.seed)
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"{len(files)} files, {total_mb:.0f} MB ({total_mb / len(files):.2f} MB each) in {args.dir}", file=sys.stderr)
    ckpt = make_checkpoint(args.dir, files, args.device)
    results = {}
    modes = [("cold", True)] + ([] if args.no_warm else [("warm", False)])
    for label, cold in modes:
        if cold:
            drop_cache(files)
        t_raw = raw_read(files, args.workers)
        if cold:
            drop_cache(files)
        t_scan, ok, stages = scan(args.dir, ckpt, args.workers, args.batch_size, args.device, procs, args.shm_budget, args.start_method,
                                 not args.no_prestart)
        assert ok == len(files), f"only {ok} of {len(files)} adapters scored"
        results[label] = {
            "raw_read_s": t_raw,
            "raw_files_per_s": len(files) / t_raw,
            "raw_mb_per_s": total_mb / t_raw,
            "scan_s": t_scan,
            "scan_adapters_per_s": len(files) / t_scan,
            "scan_mb_per_s": total_mb / t_scan,
            "scan_vs_raw": t_raw / t_scan,
            "scan_handoff": stages.pop("handoff"),
            "scan_first_row_s": stages.pop("first_row_s"),  # start-up: checkpoint, readers, first batch
            "scan_ms_per_adapter": {k: 1000 * v / len(files) for k, v in stages.items()},  # main thread stages; cpu: all processes
        }
    readers = f"{procs} reader processes" if procs else f"{args.workers} reader threads"
    print(f"\nfolder scoring, {len(files)} SD1.5 LoRAs ({total_mb:.0f} MB), {readers} (raw read: {args.workers} threads), "
          f"batch {args.batch_size}, device {args.device}, torch threads {torch.get_num_threads()} (the scorer caps them at the cores its readers leave)")
    print(f"{'cache':6} {'raw read':>22} {'lolscan scan':>26} {'scan / raw':>11}")
    for label, r in results.items():
        print(f"{label:6} {r['raw_mb_per_s']:8.0f} MB/s {r['raw_files_per_s']:7.0f} f/s "
              f"{r['scan_mb_per_s']:8.0f} MB/s {r['scan_adapters_per_s']:7.1f} adapters/s {100 * r['scan_vs_raw']:9.1f} %")
    print("ms per adapter (Scorer.timings: open, wait for readers and retire (for a scored batch) on the main thread, "
          "assemble and predict on their own overlapping threads; cpu: this process and the readers it started, "
          "not those of a fork server):")
    for label, r in results.items():
        print(f"{label:6} " + "  ".join(f"{k} {v:.2f}" for k, v in r["scan_ms_per_adapter"].items()) + f"  (first row after {r['scan_first_row_s']:.2f} s; {r['scan_handoff']})")
    if args.json:
        args.json.write_text(json.dumps({"files": len(files), "mb": total_mb, "workers": args.workers, "procs": procs,
                                         "batch_size": args.batch_size, "device": args.device, "results": results}, indent=2))


if __name__ == "__main__":
    main()
