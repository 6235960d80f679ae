"""GL-net forward time vs model size (the paper's Figure 5 setting), batched vs per-layer loops.

For each GPT-3 family size: a batch of random rank-4 LoRAs on one d_model×d_model attention
matrix per transformer layer. Times (median of --repeats after --warmup runs):
  collate  packing the Adapters into a FactorBatch (incl. host->device copy),
  forward  batched GLNet.forward on that batch,
  loop     the same network evaluated with a Python loop over layers (lolscan.nets.reference,
           a direct transcription of the math), on per-layer views of the same packed batch,
  tuned    a hand-tuned per-layer loop (`tuned_loop_forward`, --depth 1 only): per layer exactly the
           kernels the batched forward runs for all layers at once, i.e. the strongest loop baseline,
  speedup  loop / forward (and tuned / forward).
All three read the same packed tensors, so none pays for a layout copy the others avoid.
With --count-ops, also the operator calls one forward makes at the first size, all three ways
(see `count_ops`): at small sizes a GPU forward is bound by per-op launch overhead.
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
from lolscan.nets.batch import FactorBatch  # noqa: E402
from lolscan.nets.glnet import GLNet  # noqa: E402
from lolscan.nets.reference import LayerInputs, glnet_loop_forward  # noqa: E402

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


def packed_layer_inputs(batch: FactorBatch) -> LayerInputs:
    """Per spec layer ``(U [B, n, r], V [B, m, r])``: views of the packed batch, no copies."""
    out: list = [None] * batch.num_layers
    for g in batch.groups:
        for j, i in enumerate(g.indices):
            out[i] = (g.U[:, j], g.V[:, j])
    return out


def tuned_loop_forward(model: GLNet, batch: FactorBatch) -> torch.Tensor:
    """`GLNet.forward` (depth 1, concat pool) one layer at a time, with per layer the same kernels
    as the batched forward: ``mm`` on 2-D views of the packed inputs, the scale, one ``bmm`` for
    the adapters' d×d products; then one stack and the head."""
    assert model.depth == 1 and model.pool == "concat", "the tuned loop covers depth-1 GL-nets only"
    feats: list = [None] * batch.num_layers
    scale = model.input_scale
    for gi, g in enumerate(batch.groups):
        B, r = g.U.shape[0], g.U.shape[-1]
        phi, psi = model.phi[gi], model.psi[gi]
        for j, i in enumerate(g.indices):
            s = scale[i]
            u = torch.mm(g.U[:, j].permute(0, 2, 1).reshape(B * r, g.n), phi[j].T).mul_(s)  # [B·r, d]
            v = torch.mm(g.V[:, j].permute(0, 2, 1).reshape(B * r, g.m), psi[j].T).mul_(s)
            feats[i] = torch.bmm(u.view(B, r, -1).mT, v.view(B, r, -1))  # [B, d, d]
    return model.head(torch.stack(feats, dim=1).flatten(1))


def count_ops(fn: Callable[[], object]) -> dict[str, int]:
    """Operator calls made by one ``fn()`` call.

    ``profiler_aten``: ``aten::`` events in a CPU torch.profiler trace (nested calls included, e.g.
    ``aten::linear`` and the ``aten::addmm`` inside it). ``dispatched``: ops reaching a backend kernel
    (what a `TorchDispatchMode` sees, composite ops already decomposed); ``kernels``: those that are
    not views, i.e. each launches a GPU kernel on CUDA.
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.utils._python_dispatch import TorchDispatchMode

    fn()  # warm caches first
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    aten = sum(1 for e in prof.events() if e.name.startswith("aten::"))

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[torch._ops.OpOverload] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    with Count() as c:
        fn()
    metadata_only = {torch.ops.aten._unsafe_view.default}  # a view that the op schema does not mark as one
    kernels = sum(1 for f in c.ops if not f.is_view and f not in metadata_only)
    return {"profiler_aten": aten, "dispatched": len(c.ops), "kernels": kernels}


def bench_size(name: str, layers: int, d_model: int, args: argparse.Namespace, device: torch.device) -> dict:
    adapters = make_adapters(layers, d_model, args.batch, args.rank, seed=layers * d_model)
    spec = LayerSpec.from_adapters(adapters)
    torch.manual_seed(0)
    model = build_model("glnet", spec, 1, d=args.d, depth=args.depth).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        batch = collate(adapters, spec, device)
        inputs = packed_layer_inputs(batch)
        ways = {
            "forward": lambda: model(batch),
            "loop_forward": lambda: glnet_loop_forward(model, inputs),
        }
        if model.depth == 1:
            ways["tuned_loop_forward"] = lambda: tuned_loop_forward(model, batch)
        ref = ways["forward"]()
        diff = max((fn() - ref).abs().max().item() for fn in ways.values())
        t_collate = timed(lambda: collate(adapters, spec, device), device, args.warmup, args.repeats)
        t = {way: timed(fn, device, args.warmup, args.repeats) for way, fn in ways.items()}
        ops = {f"ops_{way}": count_ops(fn) for way, fn in ways.items()} if args.count_ops else {}
    return {
        "size": name,
        "layers": layers,
        "d_model": d_model,
        "rank": args.rank,
        "batch": args.batch,
        "params": params,
        "collate_ms": t_collate,
        "forward_ms": t["forward"],
        "loop_forward_ms": t["loop_forward"],
        "tuned_loop_forward_ms": t.get("tuned_loop_forward"),  # None: no tuned loop for this depth
        "speedup": t["loop_forward"] / t["forward"],
        "speedup_tuned": t["tuned_loop_forward"] / t["forward"] if "tuned_loop_forward" in t else None,
        "total_ms": t_collate + t["forward"],
        "max_abs_diff_vs_loop": diff,
        **ops,
    }


def _num(x: float | None, width: int, spec: str, unit: str = "") -> str:
    return f"{'-':>{width + len(unit)}}" if x is None else f"{x:>{width}{spec}}{unit}"


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
    p.add_argument("--count-ops", action="store_true", help="also count operator calls per forward at the first size")
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
    header = (f"{'size':>5} {'layers':>6} {'d_model':>7} {'params':>9} {'collate ms':>11} {'forward ms':>11} {'loop ms':>9} "
              f"{'speedup':>8} {'tuned ms':>9} {'speedup':>8} {'total ms':>9}")
    print(header)
    rows = []
    last = [s for s, _, _ in GPT3_SIZES].index(args.max_size)
    for name, layers, d_model in GPT3_SIZES[: last + 1]:
        r = bench_size(name, layers, d_model, args, device)
        rows.append(r)
        print(f"{name:>5} {layers:>6} {d_model:>7} {r['params'] / 1e6:>8.1f}M {r['collate_ms']:>11.2f} "
              f"{r['forward_ms']:>11.2f} {r['loop_forward_ms']:>9.2f} {r['speedup']:>7.1f}x "
              f"{_num(r['tuned_loop_forward_ms'], 9, '.2f')} {_num(r['speedup_tuned'], 7, '.1f', 'x')} {r['total_ms']:>9.2f}", flush=True)
        if r.get("ops_forward"):
            args.count_ops = False  # the first size only
            for way in ("forward", "loop_forward", "tuned_loop_forward"):
                if f"ops_{way}" not in r:
                    continue
                c = r[f"ops_{way}"]
                print(f"      {way}: {c['profiler_aten']} aten events in the profiler, "
                      f"{c['dispatched']} ops dispatched, {c['kernels']} of them kernels")
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
