"""`lolscan zoo build --nproc N` and under torchrun: ranks split the groups and the zoo is the one a single
process builds, byte for byte; a rank that dies costs only its unfinished group (issue 21, part 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import run_cli_modules
from lolscan.zoo.ranks import Ranks, assign, commit_rows, remove_stale_temporaries
from zoo_toy import recipe_toml as _toml, save_tiny_hf_base, toy_recipe, write_toy_data

ROOT = Path(__file__).resolve().parent.parent
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # as torchrun sets it; one thread per process is what is bit-reproducible


# ---- the pieces, without processes -------------------------------------------------------------
def test_assign_is_a_balanced_partition_fixed_by_the_costs():
    costs = [9, 1, 8, 2, 7, 3, 6, 4, 5, 5]
    shares = assign(costs, 3)
    assert sorted(i for s in shares for i in s) == list(range(len(costs)))  # each group exactly once
    assert all(s == sorted(s) for s in shares)  # a rank runs its groups in the one-process order
    loads = [sum(costs[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= 1  # 50 over 3 ranks: 17/17/16 at best
    assert assign(costs, 3) == shares and assign(costs, 1) == [list(range(len(costs)))]
    assert assign([1.0, 1.0], 4) == [[0], [1], [], []]  # more ranks than groups: some idle


def test_commit_rows_orders_like_one_process_whatever_the_commit_order(tmp_path):
    order = {f"a{i}": (pos, slot) for i, (pos, slot) in enumerate([(1, 0), (1, 1), (0, 0), (0, 1), (2, 0)])}
    row = {f"a{i}": {"id": f"a{i}", "x": i / 3} for i in range(5)}
    one = tmp_path / "one" / "manifest.jsonl"
    one.parent.mkdir()
    for ids in (["a2", "a3"], ["a0", "a1"], ["a4"]):  # one process: groups in position order
        commit_rows(one, [row[i] for i in ids], order)
    two = tmp_path / "two" / "manifest.jsonl"
    two.parent.mkdir()
    for ids in (["a4"], ["a0", "a1"], ["a2", "a3"]):  # ranks finishing in another order
        n = commit_rows(two, [row[i] for i in ids], order)
    assert n == 5 and two.read_bytes() == one.read_bytes()
    assert [json.loads(x)["id"] for x in one.read_text().splitlines()] == ["a2", "a3", "a0", "a1", "a4"]
    # a torn last line (a killed appender) is dropped; a redone adapter's row replaces its old one
    with open(two, "a") as f:
        f.write('{"id": "a9", "x"')
    assert commit_rows(two, [dict(row["a0"], x=7)], order) == 5
    rows = [json.loads(x) for x in two.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a2", "a3", "a0", "a1", "a4"] and rows[2]["x"] == 7
    mask = os.umask(0o022)
    os.umask(mask)
    assert oct(two.stat().st_mode & 0o777) == oct(0o666 & ~mask)  # not the temporary file's 0600
    # what a process killed inside atomic_write leaves is removed before a resume; nothing else is
    (two.parent / ".manifest.jsonl.k2j4x_.tmp").write_text("{")
    (two.parent / ".keep").write_text("")
    assert remove_stale_temporaries(two.parent) == [".manifest.jsonl.k2j4x_.tmp"]
    assert sorted(p.name for p in two.parent.iterdir()) == [".keep", "manifest.jsonl"]


def test_ranks_from_torchrun_environment():
    assert Ranks.from_env({}) == Ranks(0, 1, 0) and not Ranks.from_env({}).many
    r = Ranks.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (r.rank, r.world, r.local_rank, r.many) == (3, 4, 1, True)
    from lolscan.errors import UsageError

    with pytest.raises(UsageError):
        Ranks.from_env({"RANK": "4", "WORLD_SIZE": "4"})


# ---- real processes: --nproc 2 and torchrun, against one process ---------------------------------
pytest.importorskip("peft")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny HF base, toy data, a recipe of 4 groups, and the zoo one process builds from them."""
    from lolscan.zoo.build import build, load_base
    from lolscan.zoo.recipe import Recipe

    tmp = tmp_path_factory.mktemp("ranks")
    write_toy_data(tmp / "data")
    save_tiny_hf_base(tmp / "base")
    d = toy_recipe(tmp / "data", n_loras=8, group_size=2)
    d["base"] = {"path": str(tmp / "base"), "name": "tiny-llama", "dtype": "float32"}
    d["hparams"]["dropout"] = {"choice": [0.0, 0.1]}  # dropout masks too must not depend on the rank
    (tmp / "toy.toml").write_text(_toml(d))
    r = Recipe.load(tmp / "toy.toml")
    model, tok = load_base(r.base)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU kernels on several threads differ in the last bits from run to run
    try:
        rep = build(r, tmp / "one", model=model, tokenizer=tok, log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    assert rep.complete
    return tmp


def _files(zoo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(zoo)): p.read_bytes() for p in sorted(zoo.rglob("*")) if p.is_file()}


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lolscan", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **ONE_THREAD, **(env or {})})


def test_nproc_2_builds_the_one_process_zoo_byte_for_byte(setup, monkeypatch):
    for k, v in ONE_THREAD.items():
        monkeypatch.setenv(k, v)
    code, err, modules = run_cli_modules(["zoo", "build", str(setup / "toy.toml"), str(setup / "two"), "--nproc", "2"],
                                         timeout=300)
    assert code == 0, err
    assert "8/8 adapters, complete: 2 processes" in err
    for r in (0, 1):  # both ranks trained: 2 of the 4 groups each
        assert f"[rank {r}] 2 of the 4 groups left are this rank's" in err
        assert f"[rank {r}] group 2:" in err and f"[rank {r}] group 3:" not in err
    assert "torch" not in modules  # the launching process only waits: no torch, no model in it
    one, two = _files(setup / "one"), _files(setup / "two")
    assert sorted(two) == sorted(one) and len(one) == 2 + 8 * 2  # zoo.json, manifest, 8 PEFT folders
    assert [k for k in one if one[k] != two[k]] == []


def test_a_killed_rank_resumes_under_torchrun_to_the_same_zoo(setup):
    out = setup / "killed"
    # rank 1 commits one group, writes the folders of its next one and is SIGKILLed before that group's rows
    res = _cli("zoo", "build", str(setup / "toy.toml"), str(out), "--nproc", "2",
               env={"LOLSCAN_ZOO_TEST_KILL": "1:1"})
    assert res.returncode == 128 + 9, res.stderr
    assert "rank 1 was killed by SIGKILL" in " ".join(res.stderr.split()) and "Traceback" not in res.stderr
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert 2 <= len(rows) < 8  # rank 1's first group at least; never the killed group
    orphans = {p.name for p in (out / "adapters").iterdir()} - {r["id"] for r in rows}
    assert orphans  # folders written but never committed: redone on resume
    kept = {r["id"]: (out / r["path"] / "adapter_model.safetensors").stat().st_mtime_ns for r in rows}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "lolscan", "zoo", "build", str(setup / "toy.toml"), str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **ONE_THREAD})
    assert res.returncode == 0, res.stderr
    left = (8 - len(rows)) // 2
    assert "groups left are this rank's" in res.stderr and f"of the {left} groups left" in res.stderr
    for aid, t in kept.items():  # committed adapters were not trained again
        assert (out / "adapters" / aid / "adapter_model.safetensors").stat().st_mtime_ns == t
    one, again = _files(setup / "one"), _files(out)
    assert sorted(again) == sorted(one) and [k for k in one if one[k] != again[k]] == []


def test_nproc_refusals_are_one_line(setup):
    res = _cli("zoo", "build", str(setup / "toy.toml"), str(setup / "bad"), "--nproc", "0")
    assert res.returncode == 2 and "--nproc 0: must be at least 1" in res.stderr and "Traceback" not in res.stderr
    # a folder of another recipe: rank 0 refuses, its line is printed once, every rank leaves with exit 2
    other = json.loads(json.dumps(toy_recipe(setup / "data", n_loras=8, group_size=2, seed=8)))
    other["base"] = {"path": str(setup / "base"), "name": "tiny-llama", "dtype": "float32"}
    (setup / "other.toml").write_text(_toml(other))
    res = _cli("zoo", "build", str(setup / "other.toml"), str(setup / "one"), "--nproc", "2")
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("holds a zoo of another recipe") == 1 and "Traceback" not in res.stderr
