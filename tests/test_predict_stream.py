"""Target discovery and the streaming scorer: order, per-file errors, flat memory, true labels."""
from __future__ import annotations

import json
import shutil
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lolscan
from lolscan.checkpoint import load_checkpoint
from lolscan.scan.discovery import Found, expand
from lolscan.scan.scoring import Scorer, ScoreOptions

from helpers import REAL, train_tiny_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    zoo, _, _, path = train_tiny_checkpoint(root, seed=4, name="stream", out=root / "ckpt")
    return zoo, load_checkpoint(path)


# ---- discovery --------------------------------------------------------------------------------
def _touch(p: Path, data: bytes = b"x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_discovery_rules(tmp_path):
    peft = tmp_path / "lib" / "b_peft"
    _touch(peft / "adapter_config.json", b"{}")
    _touch(peft / "adapter_model.safetensors")
    _touch(peft / "nested" / "inner.safetensors")  # inside a PEFT folder: part of it, not separate
    _touch(tmp_path / "lib" / "a.safetensors")
    _touch(tmp_path / "lib" / "sub" / "c.safetensors")
    _touch(tmp_path / "lib" / "sub" / "notes.txt")
    _touch(tmp_path / "lib" / "old.pt")
    _touch(tmp_path / "lib" / ".cache" / "d.safetensors")
    lib = tmp_path / "lib"
    got = [f.source for f in expand([str(lib)])]
    assert got == [str(lib / "a.safetensors"), str(peft), str(lib / "sub" / "c.safetensors")]
    assert [f.source for f in expand([str(lib)], allow_pickle=True)][2] == str(lib / "old.pt")
    assert [f.source for f in expand([str(peft)])] == [str(peft)]  # a PEFT folder is ONE adapter
    # globs, duplicates, URIs, missing paths
    found = expand([str(lib / "**" / "*.safetensors"), str(lib / "a.safetensors"), "hf://org/repo", str(tmp_path / "missing.safetensors")])
    assert [f.source for f in found[:3]] == [str(lib / "a.safetensors"), str(peft), str(lib / "sub" / "c.safetensors")]
    assert found[3] == Found("hf://org/repo")
    assert found[4].error == "no such file or folder"
    assert expand([str(tmp_path / "nothing*.safetensors")])[0].error == "pattern matches no adapter files"
    (tmp_path / "empty").mkdir()
    assert "no adapter files" in expand([str(tmp_path / "empty")])[0].error
    assert expand([str(lib)]) == expand([str(lib)])


# ---- the scorer -------------------------------------------------------------------------------
def _folder(tmp_path: Path, zoo: Path, n: int) -> Path:
    lib = tmp_path / "lib"
    for i in range(n):
        shutil.copytree(zoo / f"lora_{i:04d}", lib / f"lora_{i:04d}")
    return lib


def test_rows_in_order_with_errors_and_misfits_isolated(setup, tmp_path):
    zoo, ckpt = setup
    lib = _folder(tmp_path, zoo, 7)
    _touch(lib / "lora_0002x.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # truncated/empty
    shutil.copy(REAL / "cloneofsimo_lora_disney.safetensors", lib / "lora_0004x.safetensors")
    found = expand([str(lib)])
    rows = list(Scorer(ckpt, ScoreOptions(batch_size=3, workers=2)).score(found))
    assert [r["source"] for r in rows] == [f.source for f in found]
    status = {Path(r["source"]).name: r["status"] for r in rows}
    assert status.pop("lora_0002x.safetensors") == "error"
    assert status.pop("lora_0004x.safetensors") == "incompatible"
    assert set(status.values()) == {"ok"}
    by_name = {Path(r["source"]).name: r for r in rows}
    assert "unet" in by_name["lora_0004x.safetensors"]["error"].lower()  # "a Stable Diffusion 1.x UNet + text encoder LoRA"
    # the batched predictions equal scoring each adapter on its own
    for name in ("lora_0000", "lora_0005"):
        alone = ckpt.predict([lolscan.load(str(lib / name))])[0]
        assert by_name[name]["predictions"]["score"]["value"] == pytest.approx(alone["score"]["value"], abs=1e-5)
        assert by_name[name]["predictions"]["dominant"]["value"] == alone["dominant"]["value"]


def test_memory_is_flat_in_the_number_of_files(setup, tmp_path, monkeypatch):
    """Adapters and their packed factors alive at once stay bounded, whatever the folder size."""
    from lolscan.scan import scoring

    zoo, ckpt = setup
    lib = _folder(tmp_path, zoo, 48)
    alive, peak = [0], [0]
    real_load, real_pack = lolscan.load, scoring.pack

    def track(obj):
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(obj, lambda: alive.__setitem__(0, alive[0] - 1))
        return obj

    monkeypatch.setattr(lolscan, "load", lambda *a, **k: track(real_load(*a, **k)))
    monkeypatch.setattr(scoring, "pack", lambda adapter, spec: _tracked_pack(real_pack, track, adapter, spec))
    rows = list(Scorer(ckpt, ScoreOptions(batch_size=4, workers=2)).score(expand([str(lib)])))
    assert len(rows) == 48 and all(r["status"] == "ok" for r in rows)
    window = 2 * 4 + 2  # in flight (being read or queued)
    assert peak[0] <= window + 2 * 4 + 2 < 48  # + a batch assembled while the one before it is scored (+2: being packed)


def _tracked_pack(real_pack, track, adapter, spec):
    packed = real_pack(adapter, spec)
    track(packed[0][0])  # the first group's U tensor lives exactly as long as the packed adapter
    return packed


def test_packing_equals_collate_and_processes_equal_threads(setup, tmp_path):
    from lolscan.nets import collate
    from lolscan.scan.scoring import pack, stack

    zoo, ckpt = setup
    adapters = [lolscan.load(str(zoo / f"lora_{i:04d}")) for i in range(5)]
    a = collate(adapters, ckpt.spec)
    b = stack([pack(x, ckpt.spec) for x in adapters], ckpt.spec, [x.source for x in adapters], torch.device("cpu"))
    for ga, gb in zip(a.groups, b.groups):
        assert torch.equal(ga.U, gb.U) and torch.equal(ga.V, gb.V) and torch.equal(ga.ranks, gb.ranks)
    lib = _folder(tmp_path, zoo, 9)
    _touch(lib / "bad.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    found = expand([str(lib)])
    threads = list(Scorer(ckpt, ScoreOptions(batch_size=4, workers=2)).score(found))
    procs = list(Scorer(ckpt, ScoreOptions(batch_size=4, processes=2)).score(found))
    assert threads == procs and [r["status"] for r in procs].count("error") == 1


def test_true_labels_from_labels_json_and_metadata(setup, tmp_path):
    zoo, ckpt = setup
    lib = _folder(tmp_path, zoo, 2)
    (lib / "labels.json").write_text(json.dumps({"lora_0000": {"score": 1.25, "dominant": "L2", "unrelated": 3}}))
    a = lolscan.load(str(lib / "lora_0001"))
    tensors = {}
    for name, layer in a.layers.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = layer.V.T.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = layer.U.contiguous()
    save_file(tensors, str(lib / "with_meta.safetensors"), metadata={"lolscan_labels": json.dumps({"dominant": "L1"})})
    rows = {Path(r["source"]).name: r for r in Scorer(ckpt).score(expand([str(lib)]))}
    assert rows["lora_0000"]["truth"] == {"score": 1.25, "dominant": "L2"}
    assert rows["lora_0001"]["truth"] == {}
    assert rows["with_meta.safetensors"]["status"] == "ok", rows["with_meta.safetensors"]["error"]
    assert rows["with_meta.safetensors"]["truth"] == {"dominant": "L1"}


def test_packing_equals_collate_for_mixed_ranks_and_missing_modules(setup):
    from lolscan.adapter import Adapter, Layer
    from lolscan.nets import collate
    from lolscan.scan.scoring import pack, stack

    zoo, ckpt = setup
    base = [lolscan.load(str(zoo / f"lora_{i:04d}")) for i in range(3)]
    names = list(ckpt.spec.names) if hasattr(ckpt.spec, "names") else [s.name for s in ckpt.spec]
    torch.manual_seed(0)
    varied = []
    for k, a in enumerate(base):
        layers = {}
        for j, name in enumerate(names):
            if k == 2 and j == 0:
                continue  # a module this adapter does not touch: ΔW = 0
            layer = a[name]
            r = 1 + (j + k) % 6  # ranks 1..6 differ across adapters and layers
            layers[name] = Layer(U=torch.randn(layer.n, r), V=torch.randn(layer.m, r), shape=layer.shape)
        varied.append(Adapter(layers=layers, format="test", source=f"v{k}"))
    a = collate(varied, ckpt.spec)
    b = stack([pack(x, ckpt.spec) for x in varied], ckpt.spec, [x.source for x in varied], torch.device("cpu"))
    for ga, gb in zip(a.groups, b.groups):
        assert ga.U.shape == gb.U.shape
        assert torch.equal(ga.U, gb.U) and torch.equal(ga.V, gb.V) and torch.equal(ga.ranks, gb.ranks)
