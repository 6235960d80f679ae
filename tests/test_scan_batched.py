"""A folder scored in batches gives every adapter what scoring it alone gives: predictions, intervals,
in-domain scores and flags, statuses.

Independent truth: each adapter predicted on its own (a batch of one, collated from `lolscan.load`), and
the singular values every spectral input is made of (GL-net's spectral head, the domain score) taken
from the dense ΔW = U Vᵀ with a float64 SVD. The checkpoint is trained here on a zoo of three module
shapes (three factor groups), ranks 1-6, so batches pad ranks and reorder groups; the library adds 16-
and 32-bit files, alphas, a module left out, an untrained (zero) factor, a rank-deficient layer,
ill-conditioned factors, a broken file and one of another model.
"""
from __future__ import annotations

import math
import shutil

import pytest
import torch
from helpers import REAL
from safetensors.torch import save_file

import lolscan
from lolscan.checkpoint import load_checkpoint
from lolscan.nets import collate, svd
from lolscan.scan.discovery import expand
from lolscan.scan.scoring import ScoreOptions, Scorer

MODULES = [("blocks.0.attn.q", 24, 16), ("blocks.0.attn.k", 24, 16), ("blocks.0.mlp.up", 32, 24),
           ("blocks.1.attn.q", 24, 16), ("blocks.1.mlp.up", 32, 24), ("blocks.1.mlp.down", 16, 32)]


def _write(path, layers: dict[str, tuple[torch.Tensor, torch.Tensor]], dtype=torch.float32, alpha: float | None = None,
           labels: str | None = None) -> None:
    """A PEFT file: lora_B = U [n, r], lora_A = Vᵀ [r, m]."""
    tensors = {}
    for name, (U, V) in layers.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = V.T.contiguous().to(dtype)
        tensors[f"base_model.model.{name}.lora_B.weight"] = U.contiguous().to(dtype)
        if alpha is not None:
            tensors[f"base_model.model.{name}.alpha"] = torch.tensor(alpha * U.shape[1], dtype=torch.float16)
    save_file(tensors, str(path), metadata={"lolscan_labels": labels} if labels else None)


def _random_layers(g: torch.Generator, rank=lambda j: 4) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for j, (name, n, m) in enumerate(MODULES):
        r = rank(j)
        out[name] = (torch.randn(n, r, generator=g) / math.sqrt(n) * (1 + j % 3), torch.randn(m, r, generator=g) / math.sqrt(m))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lolscan.manifest import read_manifest
    from lolscan.training import TrainOptions, prepare, save_checkpoint, train

    root = tmp_path_factory.mktemp("batched")
    zoo = root / "zoo"
    zoo.mkdir()
    g = torch.Generator().manual_seed(3)
    lines = ["path,norm,kind"]
    for i in range(48):
        layers = _random_layers(g, rank=lambda j, i=i: 1 + (i + j) % 6)
        U, V = layers["blocks.0.mlp.up"]
        f = zoo / f"z{i:02d}.safetensors"
        _write(f, layers)
        lines.append(f"{f},{float(torch.linalg.matrix_norm(U @ V.T)):.6g},{'abc'[i % 3]}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    ds = prepare(read_manifest(root / "train.csv"), ["norm", "kind"], progress=False, workers=1)
    # summaries pinned off: one GL-net whose spectral features are σ / ref, which the dense-SVD reference below feeds
    result = train(ds, TrainOptions(arch="glnet", hparams={"d": 4, "hidden": 16, "summaries": False}, max_steps=30,
                                    progress=False, threads=1))
    ckpt = load_checkpoint(save_checkpoint(ds, result, root / "ckpt", name="batched"))
    assert ckpt.domain is not None and ckpt.model.spectral > 0 and len(ckpt.spec.groups) == 3
    return ckpt, _library(root / "lib", zoo, g)


def _library(lib, zoo, g: torch.Generator):
    lib.mkdir()
    for i in range(0, 48, 6):
        shutil.copy(zoo / f"z{i:02d}.safetensors", lib / f"a{i:02d}.safetensors")
    for k, dtype in enumerate([torch.float16, torch.bfloat16, torch.float32, torch.float64]):
        layers = _random_layers(g, rank=lambda j, k=k: 1 + (j + 2 * k) % 7)
        if k == 1:
            layers.pop("blocks.0.attn.k")  # a module this adapter does not touch
        if k == 2:
            U, V = layers["blocks.1.mlp.up"]
            layers["blocks.1.mlp.up"] = (torch.zeros_like(U), V)  # an untrained up factor: ΔW = 0
        if k == 3:
            U, V = layers["blocks.0.attn.q"]
            U[:, 1], V[:, 1] = U[:, 0], V[:, 0]  # rank-deficient: two equal columns
        _write(lib / f"b{k}.safetensors", layers, dtype, alpha=1.5 + k, labels='{"kind": "b"}')
    for k, spread in enumerate([1e-3, 1e-5]):  # ill-conditioned: column scales over `spread`..1
        layers = _random_layers(g, rank=lambda j: 6)
        layers = {name: (U * torch.logspace(0, math.log10(spread), U.shape[1]), V) for name, (U, V) in layers.items()}
        _write(lib / f"c{k}.safetensors", layers, torch.float32)
    (lib / "d_broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    shutil.copy(REAL / "cloneofsimo_lora_disney.safetensors", lib / "e_other_model.safetensors")
    return lib


def _close(a, b, where: str) -> None:
    """Same structure; numbers equal to 1e-6 relative (1e-9 absolute for values near zero)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), f"{where}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _dense_spectra(ckpt, adapter, k: int) -> torch.Tensor:
    """``[L, k]`` float64: singular values of every spec module's dense ΔW (zero past the rank)."""
    rows = []
    for s in ckpt.spec:
        layer = adapter.layers.get(s.name)
        sv = (torch.linalg.svdvals(layer.U.double() @ layer.V.double().T) if layer is not None
              else torch.zeros(0, dtype=torch.float64))
        sv = sv[: layer.rank] if layer is not None else sv  # past the rank: zero, as the batch has it
        rows.append(torch.nn.functional.pad(sv[:k], (0, max(0, k - min(k, sv.numel())))))
    return torch.stack(rows)


def _scan(ckpt, lib, bs: int = 4) -> list[dict]:
    return list(Scorer(ckpt, ScoreOptions(batch_size=bs, workers=1, torch_threads=1)).score(expand([str(lib)])))


def test_a_folder_in_batches_scores_each_adapter_as_alone(setup):
    ckpt, lib = setup
    rows = _scan(ckpt, lib)
    assert len(rows) == 16
    statuses = {r["source"].rsplit("/", 1)[-1]: r["status"] for r in rows}
    assert statuses.pop("d_broken.safetensors") == "error"
    assert statuses.pop("e_other_model.safetensors") == "incompatible"
    assert set(statuses.values()) == {"ok"}
    for row in rows:
        if row["status"] != "ok":
            continue
        adapter = lolscan.load(row["source"])
        ckpt.require_fits(adapter)
        alone = collate([adapter], ckpt.spec, check=False)
        _close(row["predictions"], ckpt.predict(alone)[0], row["source"])
        _close(row["domain"], ckpt.domain_rows(alone)[0], row["source"])
        assert row["rank"] == sorted(set(adapter.ranks)) and row["layers"] == len(adapter)
    assert {r["truth"].get("kind") for r in rows if r["source"].rsplit("/", 1)[-1].startswith("b")} == {"b"}


def test_batch_spectra_are_the_dense_svd(setup):
    ckpt, lib = setup
    ads = [lolscan.load(str(p)) for p in sorted(lib.glob("[abc]*.safetensors"))]
    got = svd.batch_spectra(collate(ads, ckpt.spec, check=False), 8)
    for a, sv in zip(ads, got):
        want = _dense_spectra(ckpt, a, 8)
        top = want[:, :1]
        # float64 from r×r Grams: 1e-9 relative, and 1e-7 of the module's σ₁ where σ is zero (rank-deficient)
        assert ((sv - want).abs() <= 1e-9 * want + 1e-7 * top).all(), (sv - want).abs().max()


def test_scan_against_the_dense_svd_reference(setup):
    """Rows of the folder scan against the model and the domain score fed the dense-SVD spectra."""
    ckpt, lib = setup
    rows = {r["source"]: r for r in _scan(ckpt, lib, bs=8) if r["status"] == "ok"}
    sources = sorted(rows)
    ads = [lolscan.load(s) for s in sources]
    model, k = ckpt.model, ckpt.model.spectral
    dense = torch.stack([_dense_spectra(ckpt, a, max(k, 8)) for a in ads])
    batch = collate(ads, ckpt.spec, check=False)
    batch.cache["glnet_spectral"] = (dense[..., :k].float() / model.spec_ref.view(1, -1, 1)).flatten(1)
    want = ckpt.predict(batch)
    scores = ckpt.domain.scores(dense[..., :8].float()).tolist()
    for s, p, d in zip(sources, want, scores):
        _close(rows[s]["predictions"], p, s)
        assert math.isclose(rows[s]["domain"]["score"], d, rel_tol=1e-6), s
        assert rows[s]["domain"]["in_domain"] == (d <= ckpt.domain.threshold)


def test_spectra_are_computed_once_per_batch_for_the_model_and_the_domain(setup, monkeypatch):
    ckpt, lib = setup
    calls = []
    real = svd.singular_values

    def counted(U, V):
        calls.append(U.shape)
        return real(U, V)

    monkeypatch.setattr(svd, "singular_values", counted)
    ads = [lolscan.load(str(p)) for p in sorted(lib.glob("a*.safetensors"))]
    batch = collate(ads, ckpt.spec, check=False)
    ckpt.predict(batch)
    ckpt.domain_rows(batch)
    assert len(calls) == len(ckpt.spec.groups)  # one batched call per factor group, not one per adapter or per use
    assert all(shape[0] == len(ads) for shape in calls)


def test_domain_score_and_predictions_ignore_the_gauge(setup):
    """GL(r) invariance survives the Gram route: (U R, V R⁻ᵀ) scores as (U, V)."""
    ckpt, lib = setup
    g = torch.Generator().manual_seed(9)
    ads = [lolscan.load(str(p)) for p in sorted(lib.glob("[ab]*.safetensors"))]
    moved = []
    for a in ads:
        layers = {}
        for name, x in a.layers.items():
            R = torch.randn(x.rank, x.rank, generator=g, dtype=torch.float64) + 2 * torch.eye(x.rank, dtype=torch.float64)
            layers[name] = type(x)((x.U.double() @ R).float(), (x.V.double() @ torch.linalg.inv(R).T).float(), x.shape)
        moved.append(type(a)(layers=layers, format=a.format))
    before, after = collate(ads, ckpt.spec, check=False), collate(moved, ckpt.spec, check=False)
    for p, q in zip(ckpt.domain_rows(before), ckpt.domain_rows(after)):
        assert math.isclose(p["score"], q["score"], rel_tol=1e-4) and p["in_domain"] == q["in_domain"]
    for p, q in zip(ckpt.predict(before), ckpt.predict(after)):
        for t in p:
            for key, v in p[t].items():
                if isinstance(v, float):
                    assert math.isclose(v, q[t][key], rel_tol=1e-4, abs_tol=1e-6), (t, key)
