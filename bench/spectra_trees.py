"""Is a target in the weights at all, whatever the metanetworks make of it?  Gradient-boosted trees on GL-invariant
features of each LoRA — the log singular values of every module's ΔW = U Vᵀ — against trees on the recipe's log lr
alone and on one number, the log of Σ ‖ΔW‖²_F. A diagnostic for issue 17, not a shipped reader.

    python3 bench/spectra_trees.py ZOO/manifest.jsonl -t arc_c_acc -t val_loss [--seeds 5] [--json out.json]

Trees fit on the train + validation rows of the manifest's split column and are scored (R²) on its test rows;
the spectra trees at ``--seeds`` seeds (row subsampling 0.8), the one-feature trees once (they are deterministic).
Singular values come from the factors (`Layer.singular_values`: QR of U and V, then the r × r core), exact for
any rank.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def log_spectra(adapter) -> list[float]:
    """log σ of every module's ΔW (modules in name order, σ descending), from the factors."""
    out: list[float] = []
    for name in sorted(adapter.layers):
        out.extend(torch.log(adapter.layers[name].singular_values(torch.float64) + 1e-12).tolist())
    return out


def main() -> None:
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.metrics import r2_score

    import lolscan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("-t", "--target", action="append", required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    root = Path(a.manifest).parent
    rows = [json.loads(line) for line in open(a.manifest) if line.strip()]
    X = np.array([log_spectra(lolscan.load(str(root / r["path"]))) for r in rows])
    split = np.array([r["split"] for r in rows])
    fit, test = np.isin(split, ["train", "val"]), split == "test"
    lr = np.log10([float(r["lr"]) for r in rows]).reshape(-1, 1)
    sq = np.exp(2 * X)  # σ²: Σ over a module's σ² is its ‖ΔW‖²_F
    norm = np.log(sq.sum(1, keepdims=True))
    report: dict = {"manifest": a.manifest, "rows": len(rows), "fit_rows": int(fit.sum()), "test_rows": int(test.sum()),
                    "features": X.shape[1], "targets": {}}
    for t in a.target:
        y = np.array([float(r[t]) for r in rows])
        spectra = [r2_score(y[test], GradientBoostingRegressor(random_state=s, subsample=0.8).fit(X[fit], y[fit]).predict(X[test]))
                   for s in range(a.seeds)]
        one = {name: r2_score(y[test], GradientBoostingRegressor(random_state=0).fit(f[fit], y[fit]).predict(f[test]))
               for name, f in (("log_lr", lr), ("log_total_norm", norm))}
        report["targets"][t] = {"spectra_r2": spectra, "spectra_mean": float(np.mean(spectra)), "spectra_sd": float(np.std(spectra, ddof=1)),
                                "log_lr_r2": one["log_lr"], "log_total_norm_r2": one["log_total_norm"]}
        print(f"{t}: trees on log spectra R² {np.mean(spectra):.3f} ± {np.std(spectra, ddof=1):.3f} ({a.seeds} seeds) | "
              f"on log lr alone {one['log_lr']:.3f} | on log Σ‖ΔW‖² alone {one['log_total_norm']:.3f}  "
              f"({int(fit.sum())} fit, {int(test.sum())} test rows, {X.shape[1]} features)")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
