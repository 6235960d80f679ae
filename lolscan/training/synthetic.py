"""A labelled synthetic zoo with known answers (tests and bench/architectures.py): PEFT adapters whose
labels are known functions of ΔW."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch


def _toy_secrets(g: torch.Generator, layers: int, n: int, m: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer the secret unit directions (u*, v*) of the synthetic zoos."""

    def unit(k: int) -> torch.Tensor:
        x = torch.randn(k, generator=g, dtype=torch.float64)
        return x / x.norm()

    return [(unit(n), unit(m)) for _ in range(layers)]


def _toy_start(folder: str | Path, seed: int, layers: int, shape: tuple[int, int]):
    """The output folder, the seeded torch and Python generators, and the secret directions."""
    import random

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    return root, g, random.Random(seed), _toy_secrets(g, layers, *shape)


def _toy_layer(tensors: dict[str, torch.Tensor], layer: int, g: torch.Generator, secret: tuple[torch.Tensor, torch.Tensor],
               r: int, a: float, c: float, *, k: float = 1.0, peft_scale: float = 1.0) -> tuple[float, float]:
    """Add one synthetic layer's PEFT factors to `tensors`: a random rank-r update of Frobenius norm ≈ a
    with c·u* v*ᵀ as its last direction, ΔW then multiplied by k; B is stored divided by the PEFT scale.
    Returns s = u*ᵀ ΔW v* and ‖ΔW‖_F, both from the float32 factors the file holds."""
    u_s, v_s = secret
    n, m = len(u_s), len(v_s)
    U = a * torch.randn(n, r, generator=g, dtype=torch.float64) / math.sqrt(n * r)
    V = torch.randn(m, r, generator=g, dtype=torch.float64) / math.sqrt(m)
    U[:, -1], V[:, -1] = c * u_s, v_s
    U32, V32 = (U * math.sqrt(k)).float(), (V * math.sqrt(k)).float()
    dw = U32.double() @ V32.double().T  # exactly what the file holds
    name = f"base_model.model.model.layers.{layer}.proj"
    tensors[f"{name}.lora_A.weight"] = V32.T.contiguous()
    tensors[f"{name}.lora_B.weight"] = (U32 / peft_scale).contiguous()
    return float(u_s @ dw @ v_s), float(torch.linalg.matrix_norm(dw))


def _write_toy_peft(folder: Path, tensors: dict[str, torch.Tensor], r: int, alpha: float) -> Path:
    """One synthetic PEFT adapter folder (modules named ``….proj``)."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["proj"], "base_model_name_or_path": "synthetic/toy"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def _write_manifest_csv(root: Path, rows: list[dict[str, Any]], name: str = "manifest.csv") -> Path:
    import csv

    manifest = root / name
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


def write_synthetic_zoo(
    folder: str | Path,
    *,
    n: int = 200,
    layers: int = 4,
    shape: tuple[int, int] = (16, 12),
    rank: int | tuple[int, int] = 4,
    seed: int = 0,
) -> Path:
    """Write ``n`` PEFT adapters and ``manifest.csv`` whose labels are known functions of ΔW.

    Layer ℓ is a random rank-r update of Frobenius norm ≈ aℓ (aℓ log-uniform in [0.3, 3]) in
    which one of the r directions is cℓ·uℓ* vℓ*ᵀ along fixed secret unit vectors (cℓ uniform in
    [-2, 2]; for layer 1, cℓ ∈ [1, 2] in "planted" adapters and 0 otherwise). With
    sℓ = uℓ*ᵀ ΔWℓ vℓ* (computed exactly from the stored factors) the labels are:
    ``score`` = s₀ (regression, linear in ΔW), ``norm`` = ‖ΔW₀‖_F (regression, quadratic),
    ``planted`` (binary), ``dominant`` = argmax of s₀, s₁, s₂ as "L0"/"L1"/"L2" (multiclass),
    ``big`` = the layers with sℓ > 0.5 (multilabel). ``group`` pairs adapters, so group-aware
    splitting is exercised. Every adapter has the same modules; ranks may vary if ``rank`` is a range.
    """
    if layers < 3:
        raise ValueError("the synthetic zoo needs at least 3 layers")
    root, g, rng, secrets = _toy_start(folder, seed, layers, shape)
    rows = []
    for i in range(n):
        r = rank if isinstance(rank, int) else rng.randint(rank[0], rank[1])
        alpha = 2 * r
        planted = i % 2 == 1
        tensors, scores, norm0 = {}, [], 0.0
        for layer in range(layers):
            a = math.exp(rng.uniform(math.log(0.3), math.log(3.0)))
            c = rng.uniform(-2.0, 2.0) if layer != 1 else (rng.uniform(1.0, 2.0) if planted else 0.0)
            score, norm = _toy_layer(tensors, layer, g, secrets[layer], r, a, c, peft_scale=alpha / r)  # 2: exact in fp32
            scores.append(score)
            if layer == 0:
                norm0 = norm
        folder_i = _write_toy_peft(root / f"lora_{i:04d}", tensors, r, alpha)
        rows.append(
            {
                "path": folder_i.name,
                "score": f"{scores[0]:.8g}",
                "norm": f"{norm0:.8g}",
                "planted": int(planted),
                "dominant": f"L{max(range(3), key=lambda k: scores[k])}",
                "big": "|".join(f"L{k}" for k in range(layers) if scores[k] > 0.5),
                "group": f"pair{i // 2}",
            }
        )
    return _write_manifest_csv(root, rows)


def write_heavy_tailed_zoo(
    folder: str | Path,
    *,
    n: int = 600,
    layers: int = 12,
    shape: tuple[int, int] = (32, 48),
    rank: int = 4,
    broken: float = 0.15,
    broken_scale: tuple[float, float] = (10.0, 100.0),
    seed: int = 0,
) -> Path:
    """A zoo like a real one where some finetunes ran at far too high a learning rate.

    Every adapter is built like `write_synthetic_zoo`'s: layer ℓ is a random rank-r update of
    Frobenius norm ≈ aℓ (log-uniform in [0.3, 3]) plus cℓ·uℓ* vℓ*ᵀ along secret unit vectors (cℓ
    uniform in [-2, 2]); sℓ = uℓ*ᵀ ΔWℓ vℓ*. A fraction ``broken`` of the adapters (every
    ``round(1/broken)``-th; the healthy ones after them keep their draws) then has every ΔWℓ
    multiplied by k, log-uniform in ``broken_scale`` (both factors by √k). Labels, known
    functions of ΔW that mimic a benchmark accuracy and a validation loss:

    - ``acc``: healthy 0.59 + 0.01·(s₀ + s₁) (≈ 0.55–0.63); broken 0.40 − 0.20·t, t = position of
      log k in the ``broken_scale`` range (0.20–0.40).
    - ``loss``: healthy 2.3 + 0.1·‖ΔW₀‖_F − 0.05·s₂; broken 3 + 6·t (3–9).
    - ``energy``: ‖ΔW₀‖_F², every adapter (≈ 0.1–13 healthy, k² = 10²–10⁴ times that broken): a positive,
      heavy-tailed label (the log transform's case, `lolscan.training.LOG_TAIL_RATIO`).
    - ``broken`` (0/1) and ``group`` (pairs, for group-aware splits).
    """
    if layers < 3:
        raise ValueError("the heavy-tailed zoo needs at least 3 layers")
    if not 0.0 <= broken < 1.0:
        raise ValueError(f"broken must be a fraction in [0, 1), got {broken}")
    root, g, rng, secrets = _toy_start(folder, seed, layers, shape)
    every = round(1 / broken) if broken > 0 else 0
    lo, hi = math.log(broken_scale[0]), math.log(broken_scale[1])
    rows = []
    for i in range(n):
        is_broken = bool(every) and i % every == every - 1
        t = rng.uniform(0.0, 1.0)
        k = math.exp(lo + t * (hi - lo)) if is_broken else 1.0
        tensors, scores, norm0 = {}, [], 0.0
        for layer in range(layers):
            a = math.exp(rng.uniform(math.log(0.3), math.log(3.0)))
            c = rng.uniform(-2.0, 2.0)
            score, norm = _toy_layer(tensors, layer, g, secrets[layer], rank, a, c, k=k)  # alpha = r: PEFT scale 1
            scores.append(score)
            if layer == 0:
                norm0 = norm
        folder_i = _write_toy_peft(root / f"lora_{i:04d}", tensors, rank, rank)
        if is_broken:
            acc, loss = 0.40 - 0.20 * t, 3.0 + 6.0 * t
        else:
            acc, loss = 0.59 + 0.01 * (scores[0] + scores[1]), 2.3 + 0.1 * norm0 - 0.05 * scores[2]
        rows.append({"path": folder_i.name, "acc": f"{acc:.8g}", "loss": f"{loss:.8g}", "energy": f"{norm0 ** 2:.8g}",
                     "broken": int(is_broken), "group": f"pair{i // 2}"})
    return _write_manifest_csv(root, rows)
