"""`lolscan inspect` of plain LoRA files without torch: the report of `inspection.inspect_adapter`
computed with numpy.

For local files that `lolscan.scan.lightread` reads (kohya, diffusers and PEFT keys whose modules
are up/down pairs with optional alphas, float16/bfloat16/float32/float64 safetensors), `inspect_light`
builds the same JSON fields as ``inspect_adapter(lolscan.load(path), path)``: the factors are
converted to float32 and scaled exactly as `formats.plain` does (`lightread._write`), NaN/Inf is
looked for in the scaled factors, and the singular values come from the r×r core of the float64 QR
factors, as `Layer.singular_values` computes them. Everything else (pickles, remote URIs,
LyCORIS, DoRA, cloneofsimo, invalid headers, non-finite scales, any surprise) returns None and the
caller takes the torch path, which also gives the error messages.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import elide
from .formats.family import guess_family
from .formats.grouping import group_keys
from .formats.names import kohya_module_name
from .formats.peft_config import module_path, pattern_value
from .formats.scheme import peft_config_rule, scheme_of
from .inspection import EFFECTIVE_RANK_RTOL, file_hashes, metadata_digest
from .scan.lightread import LightReader, _plan_of
from .scan.npconvert import Converter
from .formats.stheader import parse_header, read_raw_header


@dataclass
class _Layer:
    """What `guess_family` reads of a layer."""

    n: int
    m: int


@dataclass
class _Adapter:
    """What `guess_family` and `metadata_digest` read of an `Adapter`."""

    layers: dict[str, _Layer]
    metadata: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)


def spectrum(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """float32 singular values of U Vᵀ from the r × r core of the float64 QR factors (`Layer.singular_values`)."""
    ru = np.linalg.qr(U.astype(np.float64), mode="r")
    rv = np.linalg.qr(V.astype(np.float64), mode="r")
    with np.errstate(over="ignore"):  # finite factors whose ΔW is beyond float32's range: Inf, as the torch path gives
        return np.linalg.svd(ru @ rv.T, compute_uv=False).astype(np.float32)


def stats(rank: int, U: np.ndarray, V: np.ndarray) -> dict[str, Any]:
    """`inspection.module_stats` of the scaled float32 factors."""
    if not (np.isfinite(U).all() and np.isfinite(V).all()):
        return {"rank": rank, "effective_rank": None, "frobenius": None, "spectral": None, "finite": False}
    sv = spectrum(U, V)
    smax = float(sv.max()) if sv.size else 0.0
    return {
        "rank": rank,
        "effective_rank": int((sv > np.float32(smax * EFFECTIVE_RANK_RTOL)).sum()) if smax > 0 else 0,
        "frobenius": float(np.linalg.norm(sv.astype(np.float64))),
        "spectral": smax,
        "finite": True,
    }


def _scaled(up: np.ndarray, down_t: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """U = sign(s)·√|s|·up, V = √|s|·downᵀ in float32 (`formats.plain`, `lightread._write_scaled`)."""
    if scale == 1.0:
        return up, down_t
    c = math.sqrt(abs(scale))
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to Inf: reported as NaN/Inf, as the torch path does
        return up * np.float32(c if scale >= 0 else -c), down_t * np.float32(c)


def inspect_light(source: str) -> dict[str, Any] | None:
    """The report of ``inspect_adapter(lolscan.load(source), path)`` for a plain local LoRA, else None."""
    try:
        return _inspect(source)
    except Exception:  # anything unusual: the torch path decides, with lolscan.load's messages
        return None


def _inspect(source: str) -> dict[str, Any] | None:
    found = LightReader({"spec": {"layers": []}}, [])._locate(source)
    if found is None:
        return None
    weights, config = found
    with open(weights, "rb") as fh:
        raw, size = read_raw_header(fh, weights)
        header, layout = parse_header(raw, size, weights)
        plan = _plan_of(header, layout, config is not None)
        if plan is None:
            return None
        data = memoryview(bytearray(size))
        if fh.readinto(data) != size:
            return None
    fmt, metadata, modules, scale_of = plan
    if config is not None:
        scale_of = peft_config_rule(config)
    peft = fmt == "peft"

    # Which keys form modules, which are reported as other tensors (`build_layers`, `finish`).
    grouped, leftover = group_keys(layout)
    if scheme_of(layout, metadata) == "kohya" and config is None:
        kohya = {m: roles for m, roles in grouped.items() if kohya_module_name(m) is not None}
        leftover += [k for m, roles in grouped.items() if m not in kohya for k in roles.values()]
        grouped = kohya
    extras: dict[str, list[int]] = {}
    warnings: list[str] = []
    for module, roles in grouped.items():
        if "alpha" in roles:
            entry = layout[roles["alpha"]]
            alpha_value = float(np.frombuffer(data, np.dtype({"F16": "<f2", "F32": "<f4", "F64": "<f8"}[entry[0]]), 1, entry[2])[0])
            if alpha_value == 0:
                warnings.append(f"{elide(module)}: alpha is 0; read as alpha = rank (kohya/LyCORIS), ComfyUI would disable it")
        if roles.keys() == {"alpha"}:
            extras[roles["alpha"]] = list(layout[roles["alpha"]][1])
    for k in leftover:
        extras[k] = list(layout[k][1])

    converter = Converter()
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32's range: Inf, reported as NaN/Inf
        f32 = converter.float32(data, [e for mod in modules for e in (mod[2], mod[3])])
    per_module: dict[str, dict[str, Any]] = {}
    layers: dict[str, _Layer] = {}
    used_keys: list[str] = []
    for module, name, up, down, alpha_at, n, m in modules:
        alpha = None if alpha_at is None else float(np.frombuffer(data, alpha_at[0], 1, alpha_at[1])[0])
        rank = down[1][0]
        scale, used_alpha = scale_of(module, rank, alpha)
        if not math.isfinite(scale):
            return None
        U, V = _scaled(f32[up[2], up[3]].reshape(n, rank), f32[down[2], down[3]].reshape(rank, m).T, scale)
        kernel = list(down[1][2:])
        per_module[name] = {"n": n, "m": m, "shape": [n, down[1][1], *kernel], "kind": "conv" if kernel else "linear",
                            "algo": "lora", "alpha": used_alpha, "scale": scale, "dora": False, **stats(rank, U, V)}
        layers[name] = _Layer(n, m)
        roles = grouped[module]
        used_keys += sorted(roles.values())

    if peft and config is None and all(a is None for a in (s["alpha"] for s in per_module.values())):
        warnings.append("no adapter_config.json and no alpha tensors: scale assumed to be 1")
    declared = (config or {}).get("r")
    for name, s in per_module.items():
        if declared and s["rank"] != declared and pattern_value((config or {}).get("rank_pattern") or {}, module_path(name), "rank_pattern") is None:
            warnings.append(f"{name}: rank {s['rank']} differs from r={declared} and no rank_pattern covers it")
            break
    bad = [name for name, s in per_module.items() if not s["finite"]]
    if bad:
        warnings.append(f"{len(bad)} module(s) hold NaN/Inf values, e.g. {bad[0]}")

    kinds = {e[0] for e in layout.values()}
    if len(kinds) == 1:
        dtype = kinds.pop()
    else:
        counts = Counter(layout[k][0] for k in dict.fromkeys(used_keys))
        dtype = counts.most_common(1)[0][0] if counts else ""
    md = dict(metadata)
    if peft:
        adapter_md = {"peft_config": config if config is not None else {}, **({"safetensors": md} if md else {})}
    else:
        adapter_md = {"safetensors": md}
    adapter = _Adapter(layers, adapter_md, config or {})
    ranks = [s["rank"] for s in per_module.values()]
    report: dict[str, Any] = {
        "source": str(Path(source).expanduser()),  # what `formats.load_path` names it
        "format": fmt,
        "family": guess_family(adapter),
        "modules": len(per_module),
        "rank_min": min(ranks),
        "rank_max": max(ranks),
        "mixed_rank": len(set(ranks)) > 1,
        "alphas": sorted({s["alpha"] for s in per_module.values() if s["alpha"] is not None}),
        "scales": sorted({round(s["scale"], 6) for s in per_module.values()}),
        "dtype": dtype,
        "dora": False,
        "nonfinite_modules": bad,
        "extra_tensors": extras,
        "warnings": warnings,
        "metadata": metadata_digest(adapter),
        "per_module": per_module,
    }
    path = Path(source)
    if path.exists():
        report.update(file_hashes(path))
    return report
