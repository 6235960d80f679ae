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
  `mlp` and `mlp-oalign` need `rank=` (see `common_rank(adapters)`).
- Every `MetaNet`: `forward(batch) -> [B, out_dim]`; `hparams` (JSON; `build_model(model.arch,
  model.spec, model.out_dim, **model.hparams)` rebuilds it); `config()` = {arch, out_dim, hparams,
  spec} and `model_from_config(config)`; `fit(train_adapters)` — call ONCE before training: sets
  data-dependent buffers (GL-net per-layer input scales, O-Align template, feature mean/std);
  `collate(adapters)` onto the model's device/dtype; `predict(adapters)` (no grad, chunked).
  All state is in the state_dict as plain, unshared tensors (safetensors-saveable).
"""
from __future__ import annotations

from .batch import FactorBatch, FactorGroup, collate
from .common import MetaNet, common_rank
from .dense import DenseMLP
from .glnet import GLNet, gl_gate
from .mlp import FactorMLP
from .oalign import OAlignMLP
from .registry import ARCHITECTURES, build_model, hparam_names, model_from_config
from .spec import LayerShape, LayerSpec, ShapeGroup
from .svd import SVDMLP

__all__ = [
    "ARCHITECTURES",
    "DenseMLP",
    "FactorBatch",
    "FactorGroup",
    "FactorMLP",
    "GLNet",
    "LayerShape",
    "LayerSpec",
    "MetaNet",
    "OAlignMLP",
    "SVDMLP",
    "ShapeGroup",
    "build_model",
    "collate",
    "common_rank",
    "gl_gate",
    "hparam_names",
    "model_from_config",
]
