"""Per-adapter cost of `lolscan predict` with a bundled checkpoint: read + canonicalise + score.

    python bench/predict_speed.py --device cuda --model smollm2-val-loss --repeats 50 models/examples

Reports milliseconds per adapter for reading the file, for scoring a batch, and end to end; compare
with the seconds it takes to really evaluate one LoRA on a benchmark (merge + forward passes).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import lolscan
from lolscan.checkpoint import load_checkpoint, resolve
from lolscan.scan.discovery import expand


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="+")
    ap.add_argument("--model", default="smollm2-val-loss")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    ck = load_checkpoint(resolve(args.model), device=args.device)
    sources = [f.source for f in expand(args.targets) if not f.error]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    read_ms, score_ms = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        adapters = [lolscan.load(s) for s in sources]
        t1 = time.perf_counter()
        with torch.no_grad():
            ck.model.predict(adapters)
        sync()
        t2 = time.perf_counter()
        read_ms.append((t1 - t0) * 1000 / len(sources))
        score_ms.append((t2 - t1) * 1000 / len(sources))
    figures = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "model": ck.name,
        "adapters": len(sources),
        "read_ms_per_adapter": statistics.median(read_ms[1:] or read_ms),
        "score_ms_per_adapter": statistics.median(score_ms[1:] or score_ms),
    }
    figures["total_ms_per_adapter"] = figures["read_ms_per_adapter"] + figures["score_ms_per_adapter"]
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
