"""Does refitting an ensemble's members on train + validation (after validation chose their step) name a
class-subset LoRA's dataset size more often?  A probe for issue 18, run before `lolscan train --refit` existed (with
its own loop then; it calls the library's `train_fixed` now, which gives the same figures to the digit).

    OMP_NUM_THREADS=1 python3 bench/refit_probe.py ZOO/manifest.jsonl --blocks 0 1 --json out.json

For each block b, members at seeds 11b … 11b+10 train as `lolscan train -t classes --ensemble 11` trains them
(the settings the shipped `inhouse-mix-classes` search chose, lr 1e-3, early stopping on every second validation
row), and each is then trained again from the same seed on train + all validation rows for its best step scaled
by the data ratio (the same number of epochs), at constant lr (no member's best step comes after `min_steps`, so
no lr cut happened before it). Both ensembles' count of the classes called present (p ≥ 0.5; a count does not
depend on calibration) is scored against the test LoRAs' true number of classes.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from lolscan.manifest import read_manifest
from lolscan.training.data import prepare
from lolscan.training.loop import _outputs_for, _train
from lolscan.training.options import TrainOptions
from lolscan.training.refit import train_fixed

SETTINGS = {"products": True, "squash": "asinh"}


def count_acc(out: torch.Tensor, truth: list[int]) -> float:
    called = (torch.sigmoid(out) >= 0.5).sum(1).tolist()
    return sum(int(c == t) for c, t in zip(called, truth)) / len(truth)


def label_acc(out: torch.Tensor, y: torch.Tensor) -> float:
    return float(((torch.sigmoid(out) >= 0.5).float() == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest")
    ap.add_argument("--blocks", type=int, nargs="+", default=[0])
    ap.add_argument("--members", type=int, default=11)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    ds = prepare(read_manifest(a.manifest), ["classes"], progress=False)
    val = ds.splits["val"]
    fit_ds = replace(ds, splits={**ds.splits, "val": val[0::2]})
    refit_ds = replace(ds, splits={"train": ds.splits["train"] + val, "val": [], "test": ds.splits["test"]})
    ratio = len(refit_ds.splits["train"]) / len(ds.splits["train"])
    n_classes = ds.manifest.column("n_classes")
    truth = [int(n_classes[i]) for i in ds.splits["test"]]
    y_test = ds.encoded("test")["classes"][0]
    report: dict = {"manifest": a.manifest, "ratio": ratio, "blocks": {}}
    for b in a.blocks:
        plain, refit, steps = [], [], []
        for k in range(a.members):
            seed = b * a.members + k
            o = TrainOptions(arch="glnet", hparams=dict(SETTINGS), seed=seed, lr=1e-3, progress=False, threads=1)
            t0 = time.perf_counter()
            r = _train(fit_ds, o)
            n = max(1, round(r.best_step * ratio))
            model = train_fixed(refit_ds, o, {"classes": n})  # what `lolscan train --refit` trains
            plain.append(r.outputs["test"])
            refit.append(_outputs_for(model, ds, ds.splits["test"]))
            steps.append((r.best_step, n))
            print(f"block {b} seed {seed}: best step {r.best_step} → refit {n} steps "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        p, q = torch.stack(plain).mean(0), torch.stack(refit).mean(0)
        report["blocks"][b] = {"steps": steps,
                               "plain": {"count": count_acc(p, truth), "labels": label_acc(p, y_test)},
                               "refit": {"count": count_acc(q, truth), "labels": label_acc(q, y_test)},
                               "plain_outputs": p.tolist(), "refit_outputs": q.tolist()}
        print(f"block {b}: plain {report['blocks'][b]['plain']}  refit {report['blocks'][b]['refit']}", flush=True)
        with open(a.json, "w") as f:
            json.dump(report | {"truth": truth}, f)


if __name__ == "__main__":
    main()
