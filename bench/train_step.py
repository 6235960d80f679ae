"""GL-net training steps with minibatches drawn from collate's batch-inner storage against whole-adapter
(batch-outer) storage, `FactorBatch.batch_outer`, in one run: the same model, minibatches and data.

    OMP_NUM_THREADS=1 python3 bench/train_step.py                     # SmolLM2-135M k/v shapes, 989 adapters
    python3 bench/train_step.py --n 200 --layers 8 --steps 10 --rounds 2  # quick

Each step is what `lolscan.training.loop._train` does: select 32 rows, forward, loss, backward, AdamW step. The two
layouts alternate in rounds (so a busy machine slows both alike); the median ms per step of each, their
ratio, and the largest difference between the two layouts' minibatch factors (must be 0) are printed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lolscan import Adapter, Layer  # noqa: E402
from lolscan.nets import build_model, collate  # noqa: E402
from lolscan.nets.spec import LayerShape, LayerSpec  # noqa: E402
from lolscan.training import RECOMMENDED  # noqa: E402


def adapters(n: int, layers: int, out_dim: int, in_dim: int, rank: int, seed: int) -> tuple[LayerSpec, list[Adapter]]:
    g = torch.Generator().manual_seed(seed)
    names = [f"model.layers.{i // 2}.self_attn.{'kv'[i % 2]}_proj" for i in range(layers)]
    spec = LayerSpec([LayerShape(nm, out_dim, in_dim) for nm in names])
    out = []
    for j in range(n):
        s = float(torch.rand(1, generator=g)) * 0.1
        out.append(Adapter(layers={nm: Layer(torch.randn(out_dim, rank, generator=g) * s, torch.randn(in_dim, rank, generator=g),
                                             shape=(out_dim, in_dim)) for nm in names}, format="bench", source=f"a{j}"))
    return spec, out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=989, help="training adapters")
    ap.add_argument("--layers", type=int, default=60)
    ap.add_argument("--shape", type=int, nargs=2, default=(192, 576), metavar=("OUT", "IN"))
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20, help="steps per layout per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    spec, ads = adapters(a.n, a.layers, a.shape[0], a.shape[1], a.rank, 0)
    torch.manual_seed(0)
    model = build_model("glnet", spec, 1, **RECOMMENDED["glnet"])
    model.fit(ads)
    inner = model.cache_features(collate(ads, spec)) if hasattr(model, "cache_features") else collate(ads, spec)
    layouts = {"batch-inner (collate)": inner, "batch-outer": inner.batch_outer()}
    y = torch.randn(a.n, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    order = torch.randperm(a.n, generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {k: [] for k in layouts}
    worst = 0.0
    for _ in range(a.rounds):
        for name, batch in layouts.items():
            for k in range(a.steps):
                idx = order[(k * a.batch_size) % (a.n - a.batch_size):][: a.batch_size]
                t0 = time.perf_counter()
                mb = batch.select(idx.tolist())
                loss = torch.nn.functional.mse_loss(model(mb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                times[name].append(time.perf_counter() - t0)
        mi, mo = (b.select(order[: a.batch_size].tolist()) for b in layouts.values())
        worst = max(worst, max(float((gi.U - go.U).abs().max()) for gi, go in zip(mi.groups, mo.groups)))
    res = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    ratio = res["batch-inner (collate)"] / res["batch-outer"]
    out = {"n": a.n, "layers": a.layers, "shape": list(a.shape), "rank": a.rank, "batch_size": a.batch_size,
           "threads": torch.get_num_threads(), "ms_per_step": res, "inner_over_outer": ratio, "max_abs_diff": worst}
    for name, ms in res.items():
        print(f"{name:24s} {ms:8.1f} ms per step (median of {len(times[name])})")
    print(f"batch-inner / batch-outer: {ratio:.2f}×; minibatch factors differ by at most {worst:g}; {torch.get_num_threads()} threads")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
