"""How many members a multilabel ensemble checkpoint needs, chosen on the validation split (issue 18).

    python3 bench/ensemble_size.py CHECKPOINT ZOO/manifest.jsonl [--target classes] [--count n_classes] \
        [--json OUT.json] [--boot 2000]

CHECKPOINT: an ensemble trained with `lolscan train ZOO/manifest.jsonl -t classes --ensemble K …` (members at seeds
SEED … SEED+K−1, the settings chosen at SEED). For k = 1 … K the first k members' raw outputs are averaged (what
`lolscan train --ensemble k` at the same seed serves: calibration rescales the logits and leaves the calls, p ≥ 0.5,
where they are) and scored on the manifest's val and test LoRAs: mean per-label accuracy, exact label set, and the
count (#labels called present == the `--count` column: the paper's dataset size for the class-subset zoo).

The size is chosen on validation only: the k with the highest val count accuracy, ties to the higher val mean
accuracy, then to fewer members. Test figures are printed for every k, the chosen one marked, with a bootstrap 95 %
CI over test LoRAs for the chosen k and its paired difference to k = 1 and to the largest k.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def member_logits(ckpt, adapters, target) -> np.ndarray:
    """[members, adapters, labels] raw outputs of each member for ``target`` (`EnsembleNet.member_outputs`)."""
    from lolscan.nets import EnsembleNet, collate

    if not isinstance(ckpt.model, EnsembleNet):
        raise SystemExit(f"{ckpt.path}: not an ensemble checkpoint (train it with --ensemble K)")
    dtype = next(ckpt.model.parameters()).dtype
    with torch.no_grad():
        out = ckpt.model.eval().member_outputs(collate(adapters, ckpt.spec, "cpu", dtype=dtype, check=False))
    return out.float()[..., target.out_slice].numpy()


def scores(logits: np.ndarray, truth: np.ndarray, count: np.ndarray) -> dict[str, np.ndarray]:
    """Per adapter: mean label accuracy, exact set, count right (calls: mean logit ≥ 0)."""
    called = logits >= 0
    return {"mean_accuracy": (called == truth).mean(1), "exact": (called == truth).all(1).astype(float),
            "count": (called.sum(1) == count).astype(float)}


def boot_ci(x: np.ndarray, reps: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), (reps, len(x)))
    return [float(v) for v in np.quantile(x[idx].mean(1), [0.025, 0.975])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--target", default="classes")
    ap.add_argument("--count", default="n_classes")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--boot", type=int, default=2000)
    a = ap.parse_args()

    import lolscan
    from lolscan.checkpoint import load_checkpoint
    from lolscan.manifest import read_manifest

    ckpt = load_checkpoint(a.checkpoint)
    target = next(t for t in ckpt.targets if t.name == a.target)
    rows = read_manifest(a.manifest).rows
    out: dict = {"checkpoint": str(a.checkpoint), "manifest": str(a.manifest), "members": len(ckpt.model.members),
                 "seeds": ckpt.card["training"]["ensemble"]["seeds"], "splits": {}}
    per: dict[str, dict[str, np.ndarray]] = {}
    for split in ("val", "test"):
        sel = [r for r in rows if r.split == split]
        logits = member_logits(ckpt, [lolscan.load(r.source) for r in sel], target)
        truth = np.array([[lab in r.labels[a.target] for lab in target.labels] for r in sel], float)
        count = np.array([r.labels[a.count] for r in sel])
        curves = []
        for k in range(1, len(logits) + 1):
            s = scores(logits[:k].mean(0), truth, count)
            per[f"{split}{k}"] = s["count"]
            curves.append({"k": k, **{m: float(v.mean()) for m, v in s.items()}})
        out["splits"][split] = {"n": len(sel), "curve": curves}
    val = out["splits"]["val"]["curve"]
    best = max(val, key=lambda c: (c["count"], c["mean_accuracy"], -c["k"]))["k"]
    K = out["members"]
    chosen = per[f"test{best}"]
    out["chosen"] = {"k": best, "rule": "highest val count accuracy, then val mean accuracy, then fewer members",
                     "test_count": float(chosen.mean()), "test_count_ci": boot_ci(chosen, a.boot),
                     "minus_k1": [float((chosen - per["test1"]).mean()), *boot_ci(chosen - per["test1"], a.boot)],
                     f"minus_k{K}": [float((chosen - per[f"test{K}"]).mean()), *boot_ci(chosen - per[f"test{K}"], a.boot)]}
    print(f"{a.checkpoint}: {K} members; val n={out['splits']['val']['n']}, test n={out['splits']['test']['n']}")
    print("| k | val count | val mean acc | val exact | test count | test mean acc | test exact |")
    print("|---|---|---|---|---|---|---|")
    for v, t in zip(val, out["splits"]["test"]["curve"]):
        mark = " (chosen)" if v["k"] == best else ""
        print(f"| {v['k']}{mark} | {v['count']:.3f} | {v['mean_accuracy']:.4f} | {v['exact']:.3f} | {t['count']:.3f} | "
              f"{t['mean_accuracy']:.4f} | {t['exact']:.3f} |")
    c = out["chosen"]
    print(f"chosen k={best} on validation: test count {c['test_count']:.3f} [{c['test_count_ci'][0]:.3f}, {c['test_count_ci'][1]:.3f}]; "
          f"− k=1 {c['minus_k1'][0]:+.3f} [{c['minus_k1'][1]:+.3f}, {c['minus_k1'][2]:+.3f}]; "
          f"− k={K} {c[f'minus_k{K}'][0]:+.3f} [{c[f'minus_k{K}'][1]:+.3f}, {c[f'minus_k{K}'][2]:+.3f}]")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
