"""Write a synthetic zoo with a minority of "broken" adapters (ΔW k× larger) and show what GL-net's
input scale does with it: per-adapter RMS of the invariants Ũᵢ Ṽᵢᵀ, healthy vs broken, at init.

    python bench/heavy_tailed_zoo.py /tmp/htzoo --scale 10 100      # then, e.g.:
    python bench/architectures.py /tmp/htzoo/manifest.csv -t acc -t loss --arch glnet --arch mlp-svd \\
        --hparam glnet:d=16 --hparam glnet:squash=asinh --seeds 5 --threads 1

Labels (``lolscan.training.write_heavy_tailed_zoo``): ``acc`` and ``loss`` separate broken from
healthy adapters and, within the healthy bulk, are known functions of ΔW.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--shape", type=int, nargs=2, default=(32, 48))
    ap.add_argument("--broken", type=float, default=0.15, help="fraction of broken adapters")
    ap.add_argument("--scale", type=float, nargs=2, default=(10.0, 100.0), help="range of the broken adapters' ΔW factor k")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--d", type=int, default=16)
    args = ap.parse_args()

    import torch

    from lolscan.manifest import read_manifest
    from lolscan.nets import build_model
    from lolscan.training import prepare, write_heavy_tailed_zoo

    manifest = write_heavy_tailed_zoo(args.folder, n=args.n, layers=args.layers, shape=tuple(args.shape), broken=args.broken,
                                      broken_scale=tuple(args.scale), seed=args.seed)
    ds = prepare(read_manifest(manifest), ["acc"], seed=0, progress=False)
    train = ds.split_adapters("train")
    broken = torch.tensor([ds.manifest.rows[i].labels["broken"] == "1" for i in ds.splits["train"]])
    print(f"{manifest}: {len(ds.adapters)} adapters, {int(broken.sum())} of {len(train)} training adapters broken")
    qs = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    for scale in ("rms", "median"):
        torch.manual_seed(0)
        model = build_model("glnet", ds.spec, 1, d=args.d, scale=scale).fit(train)
        with torch.no_grad():
            rms = model.invariants(model.collate(train)).pow(2).mean((1, 2, 3)).sqrt()
        fmt = lambda x: " ".join(f"{float(v):.3g}" for v in torch.quantile(x, qs))  # noqa: E731
        print(f"scale={scale}: input_scale {float(model.input_scale.min()):.3g}–{float(model.input_scale.max()):.3g}; "
              f"invariant RMS per adapter, quantiles 0/10/50/90/100 %: healthy {fmt(rms[~broken])} | broken {fmt(rms[broken])}")


if __name__ == "__main__":
    main()
