"""Plain per-layer Python-loop GL-net: the yardstick the batched `GLNet` is tested and timed against.

Reads the same parameters as a `GLNet` but walks the spec one layer at a time and forms the
d×d product Ũ Ṽᵀ explicitly for the gate, as a direct transcription of the math.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..adapter import Adapter
from .glnet import GLNet
from .spec import LayerSpec

LayerInputs = list[tuple[torch.Tensor, torch.Tensor]]


def per_layer_inputs(
    adapters: Sequence[Adapter], spec: LayerSpec, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> LayerInputs:
    """For each spec layer ``(U [B, n, r], V [B, m, r])``; r = that layer's largest rank, zero-padded."""
    out: LayerInputs = []
    for s in spec:
        layers = [a.layers.get(s.name) for a in adapters]
        r = max([x.rank for x in layers if x is not None] + [1])
        us, vs = [], []
        for x in layers:
            u = torch.zeros(s.n, r, dtype=dtype)
            v = torch.zeros(s.m, r, dtype=dtype)
            if x is not None:
                u[:, : x.rank] = x.U
                v[:, : x.rank] = x.V
            us.append(u)
            vs.append(v)
        out.append((torch.stack(us).to(device), torch.stack(vs).to(device)))
    return out


def _layer_params(model: GLNet) -> list[tuple[int, int]]:
    """Spec index -> (group index, position within the group)."""
    where = [(0, 0)] * len(model.spec)
    for gi, g in enumerate(model.spec.groups):
        for j, i in enumerate(g.indices):
            where[i] = (gi, j)
    return where


def glnet_loop_forward(model: GLNet, inputs: LayerInputs) -> torch.Tensor:
    """`GLNet.forward` computed layer by layer."""
    where = _layer_params(model)
    feats = []
    for i, (U, V) in enumerate(inputs):
        gi, j = where[i]
        s = model.input_scale[i]
        u = (model.phi[gi][j] @ U) * s  # [B, d, r]
        v = (model.psi[gi][j] @ V) * s
        for k in range(model.depth - 1):
            w = u @ v.transpose(-1, -2)  # [B, d, d], formed explicitly here
            u = u * torch.sigmoid(w.sum(-1)).unsqueeze(-1)
            v = v * torch.sigmoid(w.sum(-2)).unsqueeze(-1)
            u = model.phi_hidden[gi][k, j] @ u
            v = model.psi_hidden[gi][k, j] @ v
        feats.append(model.squash_invariants(u @ v.transpose(-1, -2)))
    x = torch.stack(feats, dim=1)  # [B, L, d, d]
    x = x.flatten(1) if model.pool == "concat" else x.mean(1).flatten(1)
    if model.spectral:
        # singular values and norms of the dense ΔW = U Vᵀ (the model uses r×r cores instead)
        spec = []
        for i, (U, V) in enumerate(inputs):
            dw = U @ V.transpose(-1, -2)
            sv = torch.linalg.svdvals(dw)[..., : model.spectral]
            sv = torch.nn.functional.pad(sv, (0, model.spectral - sv.shape[-1]))
            ref = model.spec_ref[i]
            spec.append(sv / ref)
        z = (torch.cat(spec, dim=-1) - model.spec_mean) / model.spec_std
        x = torch.cat([x * model.prod_gate, z.to(x.dtype)], dim=1)
    return model.head(x)
