"""Metanetworks that read LoRA factors (GL-net and baselines).

Public API (stable):

- `LayerShape(name, n, m)`; `LayerSpec` (ordered, unique names): `LayerSpec.from_adapters(adapters)`,
  `to_json()` / `LayerSpec.from_json(d)`, `differences(adapter) -> list[str]`, `fits(adapter)`,
  `require_fits(adapter)` (raises `lolscan.errors.IncompatibleAdapter`, exit code 4). Spec modules
  the adapter does not touch are fine (ΔW = 0); unknown modules or wrong n×m are not.
- `collate(adapters, spec, device=None, *, dtype=torch.float32, check=True) -> FactorBatch`: one
  `FactorGroup` per distinct (n, m) with U [B, L_g, n, r_g], V [B, L_g, m, r_g]; ranks zero-padded
  (exact), untouched modules all-zero; `batch.ranks()` [B, L] true ranks (0 = absent),
  `batch.to_spec_order(per_group)`, `batch.select(rows)` for minibatches, `batch.to(device, dtype)`.
- `build_model(arch, spec, out_dim, **hparams) -> MetaNet` for `arch` in `ARCHITECTURES`
  ("glnet", "mlp", "mlp-oalign", "mlp-svd", "mlp-dense"); `hparam_names(arch)`.
  `mlp` and `mlp-oalign` need `rank=`: the largest rank they read, smaller ranks zero-padded (training
  passes `max_rank(adapters)`; `common_rank(adapters)`: the one rank of a single-rank zoo).
- Every `MetaNet`: `forward(batch) -> [B, out_dim]`; `hparams` (JSON; `build_model(model.arch,
  model.spec, model.out_dim, **model.hparams)` rebuilds it); `config()` = {arch, out_dim, hparams,
  spec} and `model_from_config(config)`; `fit(train_adapters)` — call ONCE before training: sets
  data-dependent buffers (GL-net per-layer input scales, O-Align template, feature mean/std);
  `collate(adapters)` onto the model's device/dtype; `predict(adapters)` (no grad, chunked).
  All state is in the state_dict as plain, unshared tensors (safetensors-saveable).
- `PerTargetNet(members, column_member)`: copies of one trained model, output column j from member
  ``column_member[j]`` (training's per-target early stopping; see `lolscan.nets.pertarget`).
- `EnsembleNet(members)`: models of one architecture trained at several seeds, outputs averaged
  (``lolscan train --ensemble K``; see `lolscan.nets.ensemble`); `base_net(model)` unwraps both wrappers.
"""
from __future__ import annotations

from typing import Any

from .names import ARCHITECTURES, FIXED_RANK_ARCHS

# Everything else on first use: `import lolscan.nets` (for the names above) does not import torch.
_LAZY = {
    "FactorBatch": "batch", "FactorGroup": "batch", "collate": "batch",
    "MetaNet": "common", "common_rank": "common", "max_rank": "common",
    "DenseMLP": "dense", "GLNet": "glnet", "gl_gate": "glnet", "FactorMLP": "mlp", "OAlignMLP": "oalign",
    "build_model": "registry", "hparam_names": "registry", "model_from_config": "registry",
    "LayerShape": "spec", "LayerSpec": "spec", "ShapeGroup": "spec", "SVDMLP": "svd", "PerTargetNet": "pertarget",
    "EnsembleNet": "ensemble", "base_net": "ensemble",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES",
    "FIXED_RANK_ARCHS",
    "DenseMLP",
    "EnsembleNet",
    "FactorBatch",
    "FactorGroup",
    "FactorMLP",
    "GLNet",
    "LayerShape",
    "LayerSpec",
    "MetaNet",
    "OAlignMLP",
    "PerTargetNet",
    "SVDMLP",
    "ShapeGroup",
    "base_net",
    "build_model",
    "collate",
    "common_rank",
    "gl_gate",
    "hparam_names",
    "max_rank",
    "model_from_config",
]
