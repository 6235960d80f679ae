"""bench/activation_spectra.py: the activation-weighted spectrum it reads from the factors is σ(ΔW L), L Lᵀ = Σ,
computed here from the dense update; so E‖ΔW x‖² = Σ σ² for x with second moment Σ, and it is GL-invariant."""
from __future__ import annotations

import torch

from helpers import load_script
from lolscan.adapter import Adapter, Layer

A = load_script("bench/activation_spectra.py")


def _adapter(gen: torch.Generator, names: list[str], n: int = 7, m: int = 9, r: int = 3) -> Adapter:
    return Adapter({k: Layer(torch.randn(n, r, generator=gen), torch.randn(m, r, generator=gen), (n, m)) for k in names},
                   format="peft")


def test_activation_spectra_are_those_of_the_dense_update_times_the_cholesky_factor():
    gen = torch.Generator().manual_seed(0)
    names = ["model.layers.0.self_attn.k_proj", "model.layers.1.self_attn.k_proj", "model.layers.11.self_attn.k_proj"]
    ad = _adapter(gen, names)
    chol = {}
    for k in names:  # the moments file names modules without peft's prefix: matched by suffix, 1 ≠ 11
        x = torch.randn(50, 9, generator=gen, dtype=torch.float64)
        chol["base_model.model." + k] = torch.linalg.cholesky(x.T @ x / 50)
    plain, weighted = A.features(ad, chol)
    for j, k in enumerate(sorted(names)):
        dw = (ad.layers[k].U @ ad.layers[k].V.T).double()
        L = chol["base_model.model." + k]
        assert torch.allclose(torch.tensor(weighted[3 * j: 3 * j + 3], dtype=torch.float64).exp(), torch.linalg.svdvals(dw @ L)[:3], rtol=1e-6)
        assert torch.allclose(torch.tensor(plain[3 * j: 3 * j + 3], dtype=torch.float64).exp(), torch.linalg.svdvals(dw)[:3], rtol=1e-6)
    # GL(r): (U R, V R^-T) is the same update and gives the same features
    R = torch.randn(3, 3, generator=gen) + 3 * torch.eye(3)
    moved = Adapter({k: Layer(v.U @ R, v.V @ torch.linalg.inv(R).T, v.shape) for k, v in ad.layers.items()}, format="peft")
    assert torch.allclose(torch.tensor(A.features(moved, chol)[1]), torch.tensor(weighted), atol=1e-5)
