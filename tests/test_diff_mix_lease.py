"""The diffusion mix zoos over several leases (scripts/device/README.md, "Mix base"): diff_pipeline.sh ZOO=mix packs
each zoo's manifest, zoo.json and pack.json, then only the adapters of the rows it did not carry (pack_list.py,
pack.sh); qwen_v3_home.py merge --mix takes both zoos from one set of pieces, resume --mix writes diff_resume/ (both
manifests and zoo.json, base and scorer tars) into the last chunk, and a resumed diff_pipeline.sh checks it, seeds
the zoos and unpacks base and scorer, or stops on a stale DIFF_ROWS. Synthetic zoos stand in for the builds here
(no MiniLM needed); the end-to-end CPU rehearsal (diff_rehearse.sh, real builds) runs where the MiniLM chunks are."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

if not all(shutil.which(t) for t in ("bash", "split", "sha256sum", "zcat", "tar")):
    pytest.skip("needs bash and coreutils", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "scripts" / "device"
CHUNKS = Path(os.environ.get("LOLSCAN_MINILM_CHUNKS", "/work/main/.chunks"))
ORDER = [5, 1, 0, 6, 3, 2, 7, 4]  # a build's seeded group order: groups of 2
WEIGHT = "pytorch_lora_weights.safetensors"


def _sh(script: str, *args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(DEV / script), *args], cwd=cwd, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120, check=False)


def _py(script: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEV / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _build(zoo: Path, max_groups: int | None = None) -> None:
    """What build_diffusion did to a zoo folder before it wrote only a partly carried group's missing rows: zoo.json
    once, then the groups in order, each not wholly in the manifest trained whole, its adapters written and all its
    rows appended (a partly carried group's again: the merge keeps the first of a repeated id)."""
    name = zoo.name
    if not (zoo / "zoo.json").exists():
        zoo.mkdir(parents=True)
        info = {"recipe": {"name": name, "n_loras": len(ORDER), "group_size": 2}, "recipe_digest": f"d-{name}",
                "kind": "diffusion", "data": {"source": name}, "base": "lolscan/inhouse-pixel-32-mix", "resolution": 32,
                "targets": ["down.0.to_q"], "base_labels": {"clip_score": 0.5}}
        (zoo / "zoo.json").write_text(json.dumps(info, indent=1))
    done = {r["id"] for r in _rows(zoo / "manifest.jsonl")} if (zoo / "manifest.jsonl").exists() else set()
    run = 0
    for g in range(0, len(ORDER), 2):
        ids = [f"lora-{i:05d}" for i in ORDER[g:g + 2]]
        if all(i in done for i in ids):
            continue
        if max_groups is not None and run >= max_groups:
            break
        with open(zoo / "manifest.jsonl", "a") as f:
            for i in ids:
                (zoo / "adapters" / i).mkdir(parents=True, exist_ok=True)
                (zoo / "adapters" / i / WEIGHT).write_bytes(hashlib.sha256(f"{name}/{i}".encode()).digest() * 100)
                score = int(hashlib.sha256(f"{name}{i}".encode()).hexdigest()[:6], 16) / 2**24
                f.write(json.dumps({"id": i, "path": f"adapters/{i}/{WEIGHT}", "finite": True, "clip_score": score,
                                    "split": "train"}) + "\n")
        done.update(ids)
        run += 1


def _pack(p: Path, into: Path, *extra: str) -> list[Path]:
    """pack_list.py and pack.sh as the pipeline runs them; the pieces in fetch-call folders of four."""
    r = _py("pack_list.py", str(p), "cpu", "zoo", "zoo_fonts", "--extra", *extra)
    assert r.returncode == 0, r.stderr
    (p / "pack.list").write_text(r.stdout)
    r = _sh("pack.sh", str(p), "-T", str(p / "pack.list"), Q=str(p / "out" / "zoo"), PIECE="4000")
    assert r.returncode == 0, r.stderr
    parts = sorted((p / "out" / "zoo").glob("part.*"))
    calls = []
    for k in range(0, len(parts), 4):
        calls.append(into / f"call{k // 4}")
        calls[-1].mkdir(parents=True)
        for f in parts[k:k + 4] + ([p / "out" / "zoo" / "SHA256SUMS", p / "out" / "zoo" / "PACKED"] if k == 0 else []):
            shutil.copy(f, calls[-1])
    return calls


def _tar_gz(path: Path, folder: str, name: str) -> None:
    with tarfile.open(path, "w:gz") as tf:
        data = json.dumps({"name": folder}).encode()
        info = tarfile.TarInfo(f"{folder}/{name}")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))


def test_mix_leases_pack_their_own_adapters_and_resume_from_the_last_chunk(tmp_path: Path) -> None:
    home = tmp_path / "home"
    zoos = ["--mix", "--zoo", f"zoo={home / 'zoo'}", "--zoo", f"zoo_fonts={home / 'zoo_fonts'}"]
    repo = tmp_path / "repo"  # the diffusion chunks: MiniLM's mpartNN, nparts and msha256 in the last
    for k in range(3):
        (repo / ".chunks" / f"g{k:02d}").mkdir(parents=True)
        (repo / ".chunks" / f"g{k:02d}" / f"mpart{k:02d}").write_bytes(b"m" * 1000)
    (repo / ".chunks" / "g02" / "nparts").write_text("3\n")
    (repo / ".chunks" / "g02" / "msha256").write_text(f"{'0' * 64}  minilm.tar\n")

    # lease 1: the fashion zoo complete, two groups of the fonts zoo, one of whose adapters is lost; a DoRA set
    a = tmp_path / "a"
    _build(a / "zoo")
    _build(a / "zoo_fonts", max_groups=2)
    lost = _rows(a / "zoo_fonts" / "manifest.jsonl")[-1]["id"]
    (a / "zoo_fonts" / "adapters" / lost / WEIGHT).unlink()
    (a / "dora" / "adapters").mkdir(parents=True)
    (a / "dora" / "manifest.jsonl").write_text("{}\n")
    calls = _pack(a, tmp_path / "fetch_a", "dora")
    listed = (a / "pack.list").read_text().split()
    assert listed[:6] == [f"{z}/{n}" for z in ("zoo", "zoo_fonts") for n in ("manifest.jsonl", "zoo.json", "pack.json")]
    assert listed[6:-1] == [f"{z}/adapters/{r['id']}" for z in ("zoo", "zoo_fonts")
                            for r in _rows(a / z / "manifest.jsonl") if (z, r["id"]) != ("zoo_fonts", lost)] and listed[-1] == "dora"
    assert json.loads((a / "zoo_fonts" / "pack.json").read_text())["missing"] == [lost]
    assert len(calls) >= 2

    # a row arriving unlike a home row: nothing merged, in either zoo
    spare = tmp_path / "spare"
    (spare / "zoo_fonts").mkdir(parents=True)
    row = {**_rows(a / "zoo_fonts" / "manifest.jsonl")[0], "clip_score": 9.0}
    (spare / "zoo_fonts" / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    r = _py("qwen_v3_home.py", "merge", *map(str, calls), "--mix", "--zoo", f"zoo={spare / 'zoo'}", "--zoo",
            f"zoo_fonts={spare / 'zoo_fonts'}", cwd=tmp_path)
    assert r.returncode != 0 and "nothing merged" in r.stdout + r.stderr and not (spare / "zoo").exists()
    # the Qwen defaults find no v3/ in a mix pack
    r = _py("qwen_v3_home.py", "merge", *map(str, calls), "--zoo", str(spare / "v3"), cwd=tmp_path)
    assert r.returncode != 0 and "--mix" in r.stderr

    r = _py("qwen_v3_home.py", "resume", *zoos, cwd=repo)  # nothing home yet: the first lease's command
    assert r.returncode == 0 and 'DIFF_ROWS="0 0"' in r.stdout and not (repo / ".chunks" / "g02" / "diff_resume").exists()
    r = _py("qwen_v3_home.py", "merge", *map(str, calls), *zoos, cwd=repo)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "left out" in r.stdout and "dora/" in r.stdout
    assert len(_rows(home / "zoo" / "manifest.jsonl")) == 8 and len(_rows(home / "zoo_fonts" / "manifest.jsonl")) == 3
    for z in ("zoo", "zoo_fonts"):
        assert all((home / z / x["path"]).is_file() for x in _rows(home / z / "manifest.jsonl"))

    # the resume folder, into the last chunk
    tars = tmp_path / "poll"
    tars.mkdir()
    assert _py("qwen_v3_home.py", "resume", *zoos, cwd=repo).returncode != 0  # no --tars
    _tar_gz(tars / "inhouse_base_mix.tar.gz", "inhouse-base-mix", "base.json")
    _tar_gz(tars / "inhouse_clip_mix.tar.gz", "inhouse-clip-mix", "clip.json")
    r = _py("qwen_v3_home.py", "resume", *zoos, "--tars", str(tars), "--cap", "1100", cwd=repo)
    assert r.returncode != 0 and not (repo / ".chunks" / "g02" / "diff_resume").exists()  # no room
    r = _py("qwen_v3_home.py", "resume", *zoos, "--tars", str(tars), cwd=repo)
    assert r.returncode == 0 and 'DIFF_ROWS="8 3"' in r.stdout, r.stdout + r.stderr
    dr = repo / ".chunks" / "g02" / "diff_resume"
    assert sorted(x.name for x in dr.iterdir()) == sorted(["SHA256SUMS", "inhouse_base_mix.tar.gz", "inhouse_clip_mix.tar.gz",
                                                           "zoo.manifest.jsonl.gz", "zoo.zoo.json",
                                                           "zoo_fonts.manifest.jsonl.gz", "zoo_fonts.zoo.json"])
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=dr, capture_output=True, check=False).returncode == 0

    # a fonts zoo with no rows home yet travels as nothing: it starts from the beginning there
    half = tmp_path / "half"
    shutil.copytree(home / "zoo", half / "zoo")
    c = tmp_path / "c"
    r = _py("qwen_v3_home.py", "resume", "--mix", "--zoo", f"zoo={half / 'zoo'}", "--zoo", f"zoo_fonts={half / 'zoo_fonts'}",
            "--tars", str(tars), "--dest", str(c / "diff_resume"))
    assert r.returncode == 0 and 'DIFF_ROWS="8 0"' in r.stdout and not (c / "diff_resume" / "zoo_fonts.zoo.json").exists()
    shutil.copy(repo / ".chunks" / "g02" / "msha256", c)
    r = _sh("diff_pipeline.sh", P=str(c), DIFF_ROWS="8 0", SMALL="1", DEV="cpu", ZOO="mix")
    assert "carried: 8 0 rows" in r.stdout and "MiniLM" in r.stdout and not (c / "zoo_fonts").exists(), r.stdout + r.stderr

    # lease 2's machine: the chunks parked; a stale count or a damaged folder stops it before building
    b = tmp_path / "b"
    assert _sh("qwen_park.sh", cwd=repo, P=str(b)).returncode == 0
    env = {"SMALL": "1", "DEV": "cpu", "ZOO": "mix"}
    for name, rows, damage in (("stale", "8 4", False), ("damaged", "8 3", True)):
        p = tmp_path / name
        shutil.copytree(b, p)
        if damage:
            with open(p / "diff_resume" / "zoo_fonts.zoo.json", "a") as f:
                f.write(" ")
        r = _sh("diff_pipeline.sh", P=str(p), DIFF_ROWS=rows, **env)
        assert r.returncode == 6 and "FAILED" in r.stdout and "packages and data" not in r.stdout, r.stdout + r.stderr
        assert ("sha256" if damage else 'DIFF_ROWS="8 4" but "8 3"') in r.stdout
    # the right count: both zoos seeded, base and scorer unpacked; here it stops at the (fake) MiniLM
    r = _sh("diff_pipeline.sh", P=str(b), DIFF_ROWS="8 3", **env)
    assert "carried: 8 3 rows" in r.stdout and "MiniLM" in r.stdout, r.stdout + r.stderr
    assert (b / "inhouse-base-mix" / "base.json").is_file() and (b / "inhouse-clip-mix" / "clip.json").is_file()
    for z in ("zoo", "zoo_fonts"):
        assert (b / z / "manifest.jsonl").read_bytes() == (home / z / "manifest.jsonl").read_bytes()
        assert (b / z / "zoo.json").read_bytes() == (home / z / "zoo.json").read_bytes()

    # lease 2 builds the fonts groups left (the one with the lost adapter again, whole) and packs only them
    _build(b / "zoo")
    _build(b / "zoo_fonts")
    rows_b = _rows(b / "zoo_fonts" / "manifest.jsonl")
    assert len(rows_b) == 3 + 6  # the partly carried group's two rows again, then three more groups
    calls = _pack(b, tmp_path / "fetch_b")
    home_fonts = {x["id"] for x in _rows(home / "zoo_fonts" / "manifest.jsonl")}
    pack = json.loads((b / "zoo_fonts" / "pack.json").read_text())
    assert pack["carried"] == 3 and set(pack["new"]) == {x["id"] for x in rows_b} - home_fonts and len(pack["new"]) == 5
    assert json.loads((b / "zoo" / "pack.json").read_text())["new"] == []
    assert [x for x in (b / "pack.list").read_text().split() if "/adapters/" in x] == \
        [f"zoo_fonts/adapters/{i}" for i in pack["new"]]
    r = _py("qwen_v3_home.py", "merge", *map(str, calls), *zoos, cwd=repo)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "5 adapters added" in r.stdout and not dr.exists()  # the resume folder, now stale, removed

    # the home zoos: one uninterrupted build's, row for row and adapter for adapter
    ref = tmp_path / "ref"
    for z in ("zoo", "zoo_fonts"):
        _build(ref / z)
        assert (home / z / "manifest.jsonl").read_bytes() == (ref / z / "manifest.jsonl").read_bytes()
        assert (home / z / "zoo.json").read_bytes() == (ref / z / "zoo.json").read_bytes()
        for x in _rows(ref / z / "manifest.jsonl"):
            assert (home / z / x["path"]).read_bytes() == (ref / z / x["path"]).read_bytes()
    s = _py("qwen_v3_home.py", "status", *zoos)
    assert s.returncode == 0 and s.stdout.count('"rows_without_adapter": 0') == 2 and s.stdout.count('"rows": 8') == 2


@pytest.mark.skipif(not (CHUNKS / "g00" / "mpart00").is_file(), reason=f"no MiniLM and data chunks in {CHUNKS}")
def test_rehearsal_two_cpu_leases_come_home_as_one_build(tmp_path: Path) -> None:
    """diff_rehearse.sh, small: real builds on the CPU, a first lease that completes the fashion zoo and half the
    fonts zoo, a second from the resume folder alone; the home zoos equal one uninterrupted build."""
    r = subprocess.run(["bash", str(DEV / "diff_rehearse.sh"), str(tmp_path / "rh")], cwd=ROOT, capture_output=True,
                       text=True, timeout=1200, check=False,
                       env={**os.environ, "CHUNKS": str(CHUNKS), "SMALL_N": "4", "DIFF_GROUPS1": "2 1", "PIECE": "100000"})
    assert r.returncode == 0 and "REHEARSAL OK" in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]
    assert "zoo (fashion) complete" in r.stdout and "first lease: the same files" in r.stdout


def test_resume_lost_carries_a_kept_manifest_whose_adapters_are_gone(tmp_path: Path) -> None:
    """A home zoo lost with its machine but for the kept manifest and zoo.json: resume --lost carries those rows, so
    the next lease builds only the other groups; merge brings home only rows with adapters (the lost ones are left
    behind), and a later lease carried without --lost builds the lost groups again."""
    home = tmp_path / "home"
    zoos = ["--mix", "--zoo", f"zoo={home / 'zoo'}", "--zoo", f"zoo_fonts={home / 'zoo_fonts'}"]
    tars = tmp_path / "tars"
    tars.mkdir()
    _tar_gz(tars / "inhouse_base_mix.tar.gz", "inhouse-base-mix", "base.json")
    _tar_gz(tars / "inhouse_clip_mix.tar.gz", "inhouse-clip-mix", "clip.json")
    a = tmp_path / "a"
    _build(a / "zoo", max_groups=2)  # the first lease: 4 rows, whose adapters are then lost
    kept = tmp_path / "kept.jsonl"
    shutil.copy(a / "zoo" / "manifest.jsonl", kept)
    (home / "zoo").mkdir(parents=True)
    shutil.copy(a / "zoo" / "zoo.json", home / "zoo" / "zoo.json")

    def resume(*extra: str) -> tuple[Path, str]:
        dest = tmp_path / f"resume{len(list(tmp_path.glob('resume*')))}" / "diff_resume"
        r = _py("qwen_v3_home.py", "resume", *zoos, "--tars", str(tars), "--dest", str(dest), *extra)
        assert r.returncode == 0, r.stdout + r.stderr
        return dest, r.stdout

    r = _py("qwen_v3_home.py", "resume", *zoos, "--tars", str(tars), "--dest", str(tmp_path / "x"),
            "--lost", f"zoo_fonts={kept}")
    assert r.returncode != 0 and "zoo.json" in r.stderr  # no zoo.json home for the fonts zoo
    dest, out = resume("--lost", f"zoo={kept}")
    assert 'DIFF_ROWS="4 0"' in out and "4 rows of" in out
    assert subprocess.run(["zcat", str(dest / "zoo.manifest.jsonl.gz")], capture_output=True, text=True,
                          check=True).stdout == kept.read_text()

    def lease(dest: Path, name: str) -> list[Path]:
        p = tmp_path / name
        (p / "zoo").mkdir(parents=True)
        shutil.copy(dest / "zoo.zoo.json", p / "zoo" / "zoo.json")
        (p / "zoo" / "manifest.jsonl").write_text(
            subprocess.run(["zcat", str(dest / "zoo.manifest.jsonl.gz")], capture_output=True, text=True, check=True).stdout)
        (p / "zoo.carried.jsonl").write_text((p / "zoo" / "manifest.jsonl").read_text())
        _build(p / "zoo")
        return _pack(p, tmp_path / f"fetch_{name}")

    r = _py("qwen_v3_home.py", "merge", *map(str, lease(dest, "b")), *zoos)
    assert r.returncode == 0 and "4 adapters added" in r.stdout and "4 rows left behind" in r.stdout, r.stdout + r.stderr
    rows = _rows(home / "zoo" / "manifest.jsonl")
    assert len(rows) == 4 and not {x["id"] for x in rows} & {x["id"] for x in _rows(kept)}
    assert all((home / "zoo" / x["path"]).is_file() for x in rows)
    dest, out = resume()  # without --lost: the lost groups are built again
    assert 'DIFF_ROWS="4 0"' in out
    r = _py("qwen_v3_home.py", "merge", *map(str, lease(dest, "c")), *zoos)
    assert r.returncode == 0 and "4 adapters added" in r.stdout, r.stdout + r.stderr
    ref = tmp_path / "ref"
    _build(ref / "zoo")
    home_rows = {x["id"]: x for x in _rows(home / "zoo" / "manifest.jsonl")}
    assert home_rows == {x["id"]: x for x in _rows(ref / "zoo" / "manifest.jsonl")}
    for x in home_rows.values():
        assert (home / "zoo" / x["path"]).read_bytes() == (ref / "zoo" / x["path"]).read_bytes()
