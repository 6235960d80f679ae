"""Assembly overlapped with scoring (lolscan.scan.stages): the predictions of scoring batch after batch,
bit for bit, with threads and with light reader processes; a failing adapter isolated; no thread,
process or shared-memory segment left behind."""
from __future__ import annotations

import json
import multiprocessing
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lolscan
from lolscan.checkpoint import load_checkpoint
from lolscan.scan.discovery import expand
from lolscan.scan.packing import pack, stack
from lolscan.scan.scoring import Scorer, ScoreOptions

from helpers import REAL, ArenaLog, train_tiny_checkpoint

SHM = Path("/dev/shm")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    zoo, _, _, path = train_tiny_checkpoint(root, seed=11, name="stages", out=root / "ckpt")
    ckpt = load_checkpoint(path)
    return ckpt, _library(root / "lib", zoo, ckpt)


def _library(lib: Path, zoo: Path, ckpt) -> Path:
    """Zoo PEFT folders, PEFT files with alphas in every float dtype and mixed ranks, a file with no
    module in common, a broken file, a labels.json."""
    lib.mkdir()
    for i in range(9):
        shutil.copytree(zoo / f"lora_{i:04d}", lib / f"a{i:02d}")
    g = torch.Generator().manual_seed(5)
    for k, dtype in enumerate([torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float16]):
        tensors = {}
        for j, s in enumerate(ckpt.spec):
            if k == 4 and j == 2:
                continue  # a module this adapter does not touch
            r = 1 + (j + k) % 5
            tensors[f"base_model.model.{s.name}.lora_A.weight"] = (torch.randn(r, s.m, generator=g) / 3).to(dtype)
            tensors[f"base_model.model.{s.name}.lora_B.weight"] = (torch.randn(s.n, r, generator=g) / 3).to(dtype)
            tensors[f"base_model.model.{s.name}.alpha"] = torch.tensor(float(2 * r - k), dtype=torch.float16)
        save_file(tensors, str(lib / f"b{k}.safetensors"), metadata={"lolscan_labels": json.dumps({"score": k / 2})})
    (lib / "c_broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    shutil.copy(REAL / "cloneofsimo_lora_disney.safetensors", lib / "d_other_base.safetensors")
    (lib / "labels.json").write_text(json.dumps({"b1.safetensors": {"dominant": "L2"}}))
    return lib


def _serial(ckpt, found, bs: int) -> dict[str, dict]:
    """Predictions of scoring the readable adapters batch after batch, as the scorer batches them."""
    out, batch = {}, []
    readable = []
    for f in found:
        try:
            adapter = lolscan.load(f.source)
            ckpt.require_fits(adapter)
        except lolscan.LolscanError:
            continue
        readable.append((f.source, adapter))
    for i in range(0, len(readable), bs):
        chunk = readable[i : i + bs]
        batch = stack([pack(a, ckpt.spec) for _, a in chunk], ckpt.spec, [s for s, _ in chunk], ckpt.device)
        out.update(zip([s for s, _ in chunk], ckpt.predict(batch)))
    return out


@pytest.mark.parametrize("opts", [dict(workers=2), dict(processes=2)], ids=["threads", "processes"])
def test_overlapped_stages_give_the_serial_predictions_bit_for_bit(setup, opts):
    ckpt, lib = setup
    found = expand([str(lib)])
    rows = list(Scorer(ckpt, ScoreOptions(batch_size=4, **opts)).score(found))
    assert [r["source"] for r in rows] == [f.source for f in found]
    status = {Path(r["source"]).name: r["status"] for r in rows}
    assert status.pop("c_broken.safetensors") == "error" and status.pop("d_other_base.safetensors") == "incompatible"
    assert set(status.values()) == {"ok"}
    # c_broken and d_other_base sort after every readable file, so batches hold the same adapters
    want = _serial(ckpt, found, 4)
    for r in rows:
        if r["status"] == "ok":
            assert r["predictions"] == want[r["source"]], r["source"]  # exact, not approximately
    truth = {Path(r["source"]).name: r["truth"] for r in rows}
    assert truth["b1.safetensors"] == {"score": 0.5, "dominant": "L2"} and truth["b3.safetensors"] == {"score": 1.5}


def test_an_adapter_that_breaks_its_batch_is_isolated(setup, monkeypatch):
    ckpt, lib = setup
    found = expand([str(lib)])
    real = ckpt.predict

    def predict(batch):
        if any(s.endswith("b2.safetensors") for s in batch.sources):
            raise RuntimeError("boom")
        return real(batch)

    monkeypatch.setattr(ckpt, "predict", predict)
    rows = {Path(r["source"]).name: r for r in Scorer(ckpt, ScoreOptions(batch_size=4, processes=2)).score(found)}
    assert rows["b2.safetensors"]["status"] == "error" and "scoring failed: boom" in rows["b2.safetensors"]["error"]
    monkeypatch.setattr(ckpt, "predict", real)
    alone = real(stack([pack(lolscan.load(str(lib / "b3.safetensors")), ckpt.spec)], ckpt.spec, ["b3"], ckpt.device))[0]
    assert rows["b3.safetensors"]["predictions"]["score"]["value"] == pytest.approx(alone["score"]["value"], abs=1e-5)
    assert sum(r["status"] == "ok" for r in rows.values()) == 13


def test_stopping_early_leaves_no_thread_process_or_segment(setup, monkeypatch):
    ckpt, lib = setup
    found = expand([str(lib)])
    arenas, kids = ArenaLog(monkeypatch), {p.pid for p in multiprocessing.active_children()}
    gen = Scorer(ckpt, ScoreOptions(batch_size=2, processes=2)).score(found)
    next(gen)
    assert any(t.name.startswith("lolscan-predict") for t in threading.enumerate())
    gen.close()
    assert not any(t.name.startswith(("lolscan-assemble", "lolscan-predict")) for t in threading.enumerate())
    assert arenas.names and not arenas.alive() and {p.pid for p in multiprocessing.active_children()} == kids
