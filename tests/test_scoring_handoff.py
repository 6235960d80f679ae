"""The shared-memory hand-off from reader processes: same rows as threads and as scoring each adapter
alone, pickle fallback, no leaked segments or processes however the scan ends."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lolscan
from lolscan.scan import scoring
from lolscan.checkpoint import load_checkpoint
from lolscan.scan.discovery import expand
from lolscan.errors import LolscanError
from lolscan.scan.handoff import Arena, packed_floats, plan
from lolscan.scan.scoring import Scorer, ScoreOptions, pack, slot_views

from helpers import REAL, REPO, ArenaLog, train_tiny_checkpoint

SHM = Path("/dev/shm")
pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="needs POSIX shared memory in /dev/shm")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("handoff")
    zoo, _, _, path = train_tiny_checkpoint(root, seed=7, name="handoff", out=root / "ckpt")
    ckpt = load_checkpoint(path)
    lib = _library(root / "lib", zoo, ckpt)
    return ckpt, path, lib


def _library(lib: Path, zoo: Path, ckpt) -> Path:
    """14 zoo adapters, 6 rewritten with mixed ranks (1..7) and one module left out, a broken file
    and an adapter of another base model."""
    lib.mkdir()
    names = [s.name for s in ckpt.spec]
    g = torch.Generator().manual_seed(0)
    for i in range(14):
        shutil.copytree(zoo / f"lora_{i:04d}", lib / f"lora_{i:04d}")
    for k in range(6):
        base = lolscan.load(str(zoo / f"lora_{20 + k:04d}"))
        tensors = {}
        for j, name in enumerate(names):
            if k == 3 and j == 1:
                continue  # a module this adapter does not touch
            layer, r = base[name], 1 + (j + 2 * k) % 7
            tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(r, layer.m, generator=g) / 4
            tensors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(layer.n, r, generator=g) / 4
        save_file(tensors, str(lib / f"mixed_{k}.safetensors"))
    (lib / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    shutil.copy(REAL / "cloneofsimo_lora_disney.safetensors", lib / "other_base.safetensors")
    return lib


def _children() -> set[int]:
    return {p.pid for p in multiprocessing.active_children()}


def test_processes_with_shared_memory_give_the_rows_of_threads_and_of_each_adapter_alone(setup, monkeypatch):
    ckpt, _, lib = setup
    found = expand([str(lib)])
    arenas = ArenaLog(monkeypatch)
    threads = list(Scorer(ckpt, ScoreOptions(batch_size=4, workers=2)).score(found))
    scorer = Scorer(ckpt, ScoreOptions(batch_size=4, processes=2))
    shared = list(scorer.score(found))
    pickled = list(Scorer(ckpt, ScoreOptions(batch_size=4, processes=2, shm_budget=0)).score(found))
    assert arenas.names and not arenas.alive() and scorer._arena is None
    assert [r["source"] for r in shared] == [f.source for f in found]
    status = {Path(r["source"]).name: r["status"] for r in shared}
    assert status.pop("broken.safetensors") == "error" and status.pop("other_base.safetensors") == "incompatible"
    assert set(status.values()) == {"ok"} and len(status) == 20
    for a, b, c in zip(shared, threads, pickled):
        assert a.keys() == b.keys() == c.keys()
        assert {k: v for k, v in a.items() if k != "predictions"} == {k: v for k, v in b.items() if k != "predictions"}
        for t in a["predictions"]:
            assert a["predictions"][t]["value"] == pytest.approx(b["predictions"][t]["value"], abs=1e-5)
            assert c["predictions"][t]["value"] == pytest.approx(b["predictions"][t]["value"], abs=1e-5)
    for row in shared:
        if row["status"] == "ok":
            alone = ckpt.predict([lolscan.load(row["source"])])[0]
            assert row["predictions"]["score"]["value"] == pytest.approx(alone["score"]["value"], abs=1e-5)
            assert row["predictions"]["dominant"]["value"] == alone["dominant"]["value"]


def test_adapters_too_big_for_a_slot_travel_by_pickle(setup, monkeypatch):
    ckpt, _, lib = setup
    from lolscan.scan import stages

    sent = []
    real_views = stages.slot_views
    monkeypatch.setattr(scoring, "plan", lambda spec, slots, **kw: packed_floats(spec, 4))  # slots hold rank <= 4
    monkeypatch.setattr(stages, "slot_views", lambda *a, **k: sent.append(1) or real_views(*a, **k))
    found = expand([str(lib)])
    rows = list(Scorer(ckpt, ScoreOptions(batch_size=4, processes=2)).score(found))
    expected = list(Scorer(ckpt, ScoreOptions(batch_size=4, workers=1)).score(found))
    assert len(sent) == 15  # the zoo's rank-4 adapters and mixed_0 fit; 5 mixed-rank ones did not
    for a, b in zip(rows, expected):
        assert a["status"] == b["status"]
        for t in b["predictions"]:
            assert a["predictions"][t]["value"] == pytest.approx(b["predictions"][t]["value"], abs=1e-5)


def test_stopping_early_or_failing_leaves_no_segment_and_no_process(setup, monkeypatch):
    ckpt, _, lib = setup
    found = expand([str(lib)])
    arenas, kids = ArenaLog(monkeypatch), _children()
    gen = Scorer(ckpt, ScoreOptions(batch_size=2, processes=2)).score(found)
    next(gen)
    assert len(arenas.alive()) == 1  # the arena exists while scanning
    gen.close()
    assert not arenas.alive() and _children() == kids

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        for _ in Scorer(ckpt, ScoreOptions(batch_size=2, processes=2)).score(found):
            raise Boom
    assert len(arenas.names) == 2 and not arenas.alive() and _children() == kids


def test_pack_into_a_slot_round_trips(setup):
    ckpt, _, lib = setup
    spec = ckpt.spec
    adapter = lolscan.load(str(lib / "mixed_3.safetensors"))
    alone = pack(adapter, spec)
    with Arena.create(2, packed_floats(spec, 8)) as arena:
        assert pack(adapter, spec, arena.slot(1)[: packed_floats(spec, 1)]) is None  # too small: not written
        assert pack(adapter, spec, arena.slot(1)) is not None
        back = slot_views(arena.slot(1), spec, [k.tolist() for _, _, k in alone])
        for (u0, v0, k0), (u1, v1, k1) in zip(alone, back):
            assert torch.equal(u0, u1) and torch.equal(v0, v1) and torch.equal(k0, k1)
        del back
        name = arena.info.name
        assert (SHM / name).exists()
    assert not (SHM / name).exists()


def test_plan_stays_within_the_budget(setup):
    ckpt, _, _ = setup
    spec = ckpt.spec
    assert plan(spec, 10, max_rank=16) == packed_floats(spec, 16)
    assert plan(spec, 10, budget=10 * 4 * packed_floats(spec, 2)) == packed_floats(spec, 2)
    assert plan(spec, 10, budget=4 * packed_floats(spec, 1)) == 0  # not even rank 1: pickle


def test_readers_started_clean_in_a_fresh_process_leak_nothing(setup):
    """After CUDA is initialised readers start from a fork server (or spawn), not by fork; run both in
    a child interpreter so the resource tracker's complaints, if any, can be read from its stderr."""
    _, path, lib = setup
    script = textwrap.dedent(f"""
        import sys, torch
        from lolscan.scan import scoring
        from lolscan.checkpoint import load_checkpoint
        from lolscan.scan.discovery import expand

        def main():
            create = scoring.Arena.create.__func__
            def logged(cls, *a):  # name every arena this process makes, for the leak check
                arena = create(cls, *a)
                print("arena", arena.info.name)
                return arena
            scoring.Arena.create = classmethod(logged)
            scoring.torch.cuda.is_initialized = lambda: True  # as after loading a CUDA checkpoint
            assert scoring.start_method() == "forkserver"
            ckpt = load_checkpoint({str(path)!r})
            found = expand([{str(lib)!r}])
            alone = list(scoring.Scorer(ckpt, scoring.ScoreOptions(batch_size=4, workers=1)).score(found))
            for method in ("fork", "auto", "spawn", "early"):  # fork first: before any arena started the tracker
                opts = scoring.ScoreOptions(batch_size=4, processes=2, start_method="auto" if method == "early" else method)
                scorer = scoring.Scorer(ckpt, opts)
                if method in ("early", "fork"):  # started ahead: from the fork server in the background, or forked now
                    scorer.prestart()
                rows = list(scorer.score(found))
                assert [r["status"] for r in rows] == [r["status"] for r in alone]
                for a, b in ((a, b) for a, b in zip(rows, alone) if b["status"] == "ok"):
                    assert abs(a["predictions"]["score"]["value"] - b["predictions"]["score"]["value"]) < 1e-5
                    assert a["predictions"]["dominant"]["value"] == b["predictions"]["dominant"]["value"]
                print(method, "rows", len(rows))

        if __name__ == "__main__":
            main()
    """)
    script_path = path.parent / "clean_start.py"
    script_path.write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script_path)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "auto rows 22" in done.stdout and "spawn rows 22" in done.stdout and "early rows 22" in done.stdout and "fork rows 22" in done.stdout
    assert "leaked" not in done.stderr and "resource_tracker" not in done.stderr, done.stderr[-2000:]
    made = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("arena ")]
    assert len(made) == 4 and not any((SHM / name).exists() for name in made)


def test_pinning_registers_and_unregisters_the_whole_segment(setup, monkeypatch):
    """CUDA page-locking through the runtime's register/unregister pair (a stand-in runtime here)."""
    calls = []

    class Runtime:
        class cudaError:  # noqa: N801 - the runtime's spelling
            success = 0

        def cudaHostRegister(self, ptr, size, flags):  # noqa: N802
            calls.append(("register", ptr, size, flags))
            return 0

        def cudaHostUnregister(self, ptr):  # noqa: N802
            calls.append(("unregister", ptr))
            return 0

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: Runtime())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    arena = Arena.create(3, 1000)
    ptr = arena.slot(0).data_ptr()
    assert arena.pin()
    arena.close()
    assert calls == [("register", ptr, 3 * 1000 * 4, 0), ("unregister", ptr)]
    assert not (SHM / arena.info.name).exists()


# ---- reader processes started ahead (ReaderPool, Scorer.prestart, `lolscan predict`) -------------
def test_readers_started_ahead_give_the_same_rows_bit_for_bit(setup, monkeypatch):
    ckpt, _, lib = setup
    found = expand([str(lib)])
    arenas, kids = ArenaLog(monkeypatch), _children()
    plain = list(Scorer(ckpt, ScoreOptions(batch_size=4, processes=2)).score(found))
    with scoring.ReaderPool(2) as readers:
        assert readers.method == "fork" and len(_children() - kids) == 2  # forked at once, before any checkpoint
        early = list(Scorer(ckpt, ScoreOptions(batch_size=4, processes=2), readers=readers).score(found))
    scorer = Scorer(ckpt, ScoreOptions(batch_size=4, processes=2))
    scorer.prestart()
    prestarted = list(scorer.score(found))
    threads = list(Scorer(ckpt, ScoreOptions(batch_size=4, workers=1)).score(found))
    assert early == plain == prestarted  # predictions included, exactly
    assert [r["status"] for r in early] == [r["status"] for r in threads]
    assert len(arenas.names) == 3 and not arenas.alive() and _children() == kids
    with scoring.ReaderPool(2) as readers, pytest.raises(ValueError):
        Scorer(ckpt, ScoreOptions(processes=3), readers=readers)
    assert _children() == kids


def test_readers_started_ahead_stop_when_no_scan_follows(setup, monkeypatch):
    _, path, lib = setup
    arenas, kids = ArenaLog(monkeypatch), _children()
    with pytest.raises(LolscanError):
        with scoring.ReaderPool(2):
            load_checkpoint(path.parent / "no-such-checkpoint")
    assert _children() == kids
    scorer = Scorer(load_checkpoint(path), ScoreOptions(processes=2))
    scorer.prestart()
    assert len(_children() - kids) == 2
    scorer.close()
    assert _children() == kids and not arenas.names


def test_predict_starts_readers_before_the_checkpoint_and_leaks_nothing_when_it_fails(setup, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from lolscan.cli.app import _register, app

    _register()

    _, path, lib = setup
    arenas, kids = ArenaLog(monkeypatch), _children()
    started = []
    real = scoring.ReaderPool.__init__

    def logged(self, *a, **k):
        real(self, *a, **k)
        started.append(self)

    monkeypatch.setattr(scoring.ReaderPool, "__init__", logged)
    bad = CliRunner().invoke(app, ["predict", str(lib), "--procs", "2", "--model", str(tmp_path / "missing"), "-f", "jsonl"])
    assert bad.exit_code != 0 and len(started) == 1 and started[0].processes == 2
    assert _children() == kids and not arenas.names  # the processes stopped; no segment was ever made
    ok = CliRunner().invoke(app, ["predict", str(lib), "--procs", "2", "--model", str(path), "-f", "jsonl", "--no-progress"])
    assert ok.exit_code in (3, 4), ok.output  # the broken file and the other base model
    assert len(started) == 2 and len(arenas.names) == 1 and not arenas.alive() and _children() == kids
    alone = list(Scorer(load_checkpoint(path), ScoreOptions(batch_size=32, workers=2)).score(expand([str(lib)])))
    rows = [json.loads(line) for line in ok.stdout.splitlines() if line.startswith("{")]
    assert [r["predictions"] for r in rows] == [r["predictions"] for r in alone]
