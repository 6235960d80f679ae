"""GL-net forward time vs model size (the paper's Figure 5 setting), batched vs a per-layer loop.

For each GPT-3 family size: a batch of random rank-4 LoRAs on one d_model×d_model attention
matrix per transformer layer. Times (median of --repeats after --warmup runs):
  collate  packing the Adapters into a FactorBatch (incl. host->device copy),
  forward  batched GLNet.forward on that batch,
  loop     the same network evaluated with a Python loop over layers (lolscan.nets.reference),
  speedup  loop / forward.
Needs only torch and lolscan:  python bench/forward.py --device cuda --json out.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lolscan import Adapter, Layer  # noqa: E402
from lolscan.nets import LayerSpec, build_model, collate  # noqa: E402
from lolscan.nets.reference import glnet_loop_forward, per_layer_inputs  # noqa: E402

# name, layers, d_model (GPT-3 paper, Table 2.1)
GPT3_SIZES: list[tuple[str, int, int]] = [
    ("125M", 12, 768),
    ("350M", 24, 1024),
    ("760M", 24, 1536),
    ("1.3B", 24, 2048),
    ("2.7B", 32, 2560),
    ("6.7B", 32, 4096),
    ("13B", 40, 5140),
    ("175B", 96, 12288),
]


def make_adapters(layers: int, d_model: int, batch: int, rank: int, seed: int) -> list[Adapter]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(batch):
        mods = {}
        for i in range(layers):
            U = torch.randn(d_model, rank, generator=g) / d_model**0.25
            V = torch.randn(d_model, rank, generator=g) / d_model**0.25
            mods[f"transformer.h.{i}.attn.q_proj"] = Layer(U, V, shape=(d_model, d_model))
        out.append(Adapter(layers=mods, format="bench", source=f"random-{b}"))
    return out


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time in milliseconds."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_size(name: str, layers: int, d_model: int, args: argparse.Namespace, device: torch.device) -> dict:
    adapters = make_adapters(layers, d_model, args.batch, args.rank, seed=layers * d_model)
    spec = LayerSpec.from_adapters(adapters)
    torch.manual_seed(0)
    model = build_model("glnet", spec, 1, d=args.d, depth=args.depth).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        batch = collate(adapters, spec, device)
        inputs = per_layer_inputs(adapters, spec, device=device)
        diff = (model(batch) - glnet_loop_forward(model, inputs)).abs().max().item()
        t_collate = timed(lambda: collate(adapters, spec, device), device, args.warmup, args.repeats)
        t_forward = timed(lambda: model(batch), device, args.warmup, args.repeats)
        t_loop = timed(lambda: glnet_loop_forward(model, inputs), device, args.warmup, args.repeats)
    return {
        "size": name,
        "layers": layers,
        "d_model": d_model,
        "rank": args.rank,
        "batch": args.batch,
        "params": params,
        "collate_ms": t_collate,
        "forward_ms": t_forward,
        "loop_forward_ms": t_loop,
        "speedup": t_loop / t_forward,
        "total_ms": t_collate + t_forward,
        "max_abs_diff_vs_loop": diff,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=int, default=8, help="adapters per forward pass")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--d", type=int, default=32, help="GL-net hidden width")
    p.add_argument("--depth", type=int, default=1, help="GL-net equivariant layers")
    p.add_argument("--max-size", default="175B", choices=[s for s, _, _ in GPT3_SIZES], help="largest size to run")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no GPU")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "rank": args.rank,
        "d": args.d,
        "depth": args.depth,
    }
    print(f"GL-net forward, {env['device']} ({args.device}, {env['threads']} threads), torch {env['torch']}, "
          f"batch {args.batch}, rank {args.rank}, d {args.d}, depth {args.depth}; median of {args.repeats}")
    header = f"{'size':>5} {'layers':>6} {'d_model':>7} {'params':>9} {'collate ms':>11} {'forward ms':>11} {'loop ms':>9} {'speedup':>8} {'total ms':>9}"
    print(header)
    rows = []
    last = [s for s, _, _ in GPT3_SIZES].index(args.max_size)
    for name, layers, d_model in GPT3_SIZES[: last + 1]:
        r = bench_size(name, layers, d_model, args, device)
        rows.append(r)
        print(f"{name:>5} {layers:>6} {d_model:>7} {r['params'] / 1e6:>8.1f}M {r['collate_ms']:>11.2f} "
              f"{r['forward_ms']:>11.2f} {r['loop_forward_ms']:>9.2f} {r['speedup']:>7.1f}x {r['total_ms']:>9.2f}", flush=True)
        if r["max_abs_diff_vs_loop"] > 1e-3:
            print(f"warning: batched and loop outputs differ by {r['max_abs_diff_vs_loop']:.2e}", file=sys.stderr)
        del r
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
