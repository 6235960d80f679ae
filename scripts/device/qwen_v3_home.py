"""Home side of the zoos built over several leases, each on a fresh machine, each bringing its own adapters home
in pieces (smol_fetch.sh fetches them): the Qwen v3 zoo (README.md here, "Qwen v3": 2,000 LoRAs over about six
leases, packed by qwen_v3.sh as v3/) and, with --mix, the diffusion mix's two zoos (README.md here, "Mix base":
diff_pipeline.sh ZOO=mix packs zoo/ and zoo_fonts/ in one set of pieces).

    python3 scripts/device/qwen_v3_home.py merge FETCHED_DIR... [--zoo Z] [--manifest qwen_v3_manifest.jsonl.gz]
    python3 scripts/device/qwen_v3_home.py resume [--zoo Z] [--chunks .chunks] [--cap 54000000]
    python3 scripts/device/qwen_v3_home.py status [--zoo Z]
    python3 scripts/device/qwen_v3_home.py merge FETCHED_DIR... --mix [--manifest zoo=zoo_manifest.jsonl.gz ...]
    python3 scripts/device/qwen_v3_home.py resume --mix --tars DIR [--chunks .chunks] [--cap 54000000] [--lost zoo=M.gz ...]

--zoo [NAME=]PATH, once per zoo: the home zoo for the pack's folder NAME (v3 when NAME= is left out). Defaults:
v3=/work/kit/qwenv3/zoo, or with --mix zoo=/work/kit/mixzoo/zoo and zoo_fonts=/work/kit/mixzoo/zoo_fonts.
--manifest [NAME=]FILE likewise. A row's adapter is a PEFT folder (path adapters/ID: adapter_config.json and
adapter_model.safetensors) or a diffusers file (path adapters/ID/pytorch_lora_weights.safetensors).

merge: the pieces (part.NN, SHA256SUMS, PACKED) from the folders the fetch calls brought back; every piece's
sha256 checked, the longest run of good pieces from part.00 on unpacked (a lease that ended mid-fetch still
gives what came). A row of the lease's manifest joins the home zoo's manifest only with its adapter (both files
complete), so every home row has its adapter and a row whose adapter stayed behind is built again by a later
lease (its group is not done). Union by id: a row the home zoo already holds must be the same row, else
nothing is merged (--keep-home keeps the home row and adapter for such ids instead). zoo.json is taken from
the first lease and checked (recipe, pool, targets, base) against every later one. Rows are written in the
lease's manifest order (the build's group order), so after the last lease the home manifest is the manifest
one uninterrupted build would have written (where the build is deterministic).

resume: the next lease's resume pair, manifest.jsonl.gz + zoo.json + SHA256SUMS, from the home zoo into
the last chunk's v3_resume/ (qwen_park.sh parks it as $P/v3_resume; qwen_v3.sh seeds the build with it);
checks the chunk stays under --cap and prints the start command (V3_ROWS: the rows carried). With --mix:
diff_resume/ with NAME.manifest.jsonl.gz + NAME.zoo.json of each zoo that has rows, the first lease's base and
scorer tars (from --tars DIR, where a poll brought them) and SHA256SUMS over all (diff_pipeline.sh unpacks
base and scorer and seeds the zoos), and the start command with DIFF_ROWS (the rows carried, per zoo). --lost [NAME=]MANIFEST
(the home zoo holding only zoo.json, say, after a kept manifest outlived its adapters): that manifest's rows are
carried too, before the home rows, so the lease builds only the groups not in it; their adapters never come, so
merge leaves them out ("left behind") and a later lease carried without --lost builds their groups again.
--known MANIFEST.gz (v3; the home kit gone, a kept cumulative manifest in bench/history/results/): carried as
v3_resume/known.jsonl.gz, and qwen_v3.sh builds with --labels-from it: the groups it holds at training cost (≈ 2/3
of a measured LoRA's), the rest measured; on another GPU model than built its rows (V3_KNOWN=carry, the second start
line printed) its rows are carried and only later groups built. Such a lease writes its own zoo.json on the device
(home keeps its first), so the kept manifest may be the latest cumulative one each time.

A pack may hold other folders (a first diffusion lease's dora/): they are left out.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import time
from pathlib import Path, PurePosixPath

ZOO = "/work/kit/qwenv3/zoo"
MIX_ZOOS = {"zoo": "/work/kit/mixzoo/zoo", "zoo_fonts": "/work/kit/mixzoo/zoo_fonts"}
MIX_TARS = ("inhouse_base_mix.tar.gz", "inhouse_clip_mix.tar.gz")  # diff_pipeline.sh's names for base and scorer
FILES = ("adapter_config.json", "adapter_model.safetensors")
SAME_ZOO = ("recipe_digest", "pool_digest", "data", "resolution", "targets", "base")
# V3_END: 1,500 s after the first call with all 30 device minutes left (`status`'s budget_left_s less 300 if not)
KNOWN = "known.jsonl.gz"  # resume --known: qwen_v3.sh builds with --labels-from it
START = "bash scripts/device/qwen_park.sh && V3=1 V3_ROWS={} V3_END=1500 bash scripts/device/qwen_start.sh 1200 0"
# ZOO_END: 1,280 s for the first lease (base and scorer first), 1,400 for a resumed one (no training: see README.md)
MIX_START = ("P=/root/d bash scripts/device/qwen_park.sh && ZOO=mix DIFF_ROWS=\"{}\" BASE_DTYPE=float16 P=/root/d "
             "bash scripts/device/diff_start.sh {} 300 0")


def zoo_map(given: list[str] | None, mix: bool) -> dict[str, Path]:
    """The pack's folder name -> home zoo, from --zoo [NAME=]PATH (NAME: v3 when left out)."""
    if not given:
        return {k: Path(v) for k, v in (MIX_ZOOS if mix else {"v3": ZOO}).items()}
    out: dict[str, Path] = {}
    for z in given:
        name, _, path = z.partition("=") if "=" in z else ("v3", "", z)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in out:
            sys.exit(f"--zoo {z!r}: NAME=PATH, each NAME once")
        out[name] = Path(path)
    return out


def adapter_files(row: dict) -> list[str]:
    """A row's adapter files, relative to its zoo: a PEFT folder's two, or the one diffusers file its path names."""
    p = row["path"]
    return [p] if p.endswith(".safetensors") else [f"{p}/{f}" for f in FILES]


def adapter_dir(row: dict) -> str:
    """The folder that holds a row's adapter (adapters/ID), moved as one."""
    p = row["path"]
    return str(PurePosixPath(p).parent) if p.endswith(".safetensors") else p


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_rows(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def has_adapter(zoo: Path, row: dict) -> bool:
    return all((zoo / f).is_file() and (zoo / f).stat().st_size > 0 for f in adapter_files(row))


class Pieces(io.RawIOBase):
    """Files read one after the other as one stream (the split tar)."""

    def __init__(self, paths: list[Path]):
        self.paths, self.f = list(paths), None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while True:
            if self.f is None:
                if not self.paths:
                    return 0
                self.f = open(self.paths.pop(0), "rb")  # noqa: SIM115 - closed at its end, one file after another
            n = self.f.readinto(b)
            if n:
                return n
            self.f.close()
            self.f = None


def gather(folders: list[str]) -> dict[str, Path]:
    """part.NN, SHA256SUMS and PACKED from the given folders (not their subfolders); the same name twice must
    be the same file."""
    found: dict[str, Path] = {}
    for folder in map(Path, folders):
        for f in sorted(folder.iterdir()) if folder.is_dir() else [folder]:
            if f.is_file() and (re.fullmatch(r"part\.\d{2,}", f.name) or f.name in ("SHA256SUMS", "PACKED")):
                if f.name in found and sha256(found[f.name]) != sha256(f):
                    sys.exit(f"merge: two different {f.name}: {found[f.name]} and {f}")
                found.setdefault(f.name, f)
    return found


def good_pieces(found: dict[str, Path]) -> tuple[list[Path], list[str]]:
    """The pieces to unpack (part.00 on, as long as each is there and its sha256 right) and the problems."""
    if "SHA256SUMS" not in found:
        sys.exit("merge: no SHA256SUMS among the fetched files (the first fetch call brings it with PACKED)")
    sums = [line.split() for line in found["SHA256SUMS"].read_text().splitlines() if line.strip()]
    want = {name.lstrip("*"): h for h, name in sums}
    names = sorted(want)
    problems = []
    if "PACKED" in found and int(found["PACKED"].read_text().split()[0]) != len(names):
        problems.append(f"PACKED says {found['PACKED'].read_text().strip()} pieces, SHA256SUMS lists {len(names)}")
    use: list[Path] = []
    for name in names:
        if name not in found:
            problems.append(f"{name} missing")
        elif sha256(found[name]) != want[name]:
            problems.append(f"{name}: sha256 differs")
        elif len(use) == names.index(name):
            use.append(found[name])
            continue
        else:
            problems.append(f"{name} not used: an earlier piece is missing")
    return use, problems


def unpack(pieces: list[Path], staging: Path, folders: set[str]) -> tuple[set[str], str | None, set[str]]:
    """Stream the tar into `staging`, the entries under `folders` (the zoos' names); the names whose data arrived
    whole, why it stopped early if it did, and the other top folders (left out)."""
    complete: set[str] = set()
    other: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BufferedReader(Pieces(pieces), 1 << 20), mode="r|") as tf:
            for m in tf:
                parts = PurePosixPath(m.name).parts
                if not parts or ".." in parts or m.name.startswith("/"):
                    raise SystemExit(f"merge: unexpected name in the pack: {m.name!r}")
                if parts[0] not in folders:
                    other.add(parts[0])
                    continue
                dest = staging.joinpath(*parts)
                if m.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(m)
                    with open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
                    if dest.stat().st_size != m.size:
                        return complete, f"{m.name} cut short", other
                    complete.add(m.name)
    except (tarfile.ReadError, tarfile.StreamError, EOFError, OSError) as exc:
        return complete, f"{type(exc).__name__}: {exc}", other
    return complete, None, other


def named_files(given: list[str] | None, zoos: dict[str, Path]) -> dict[str, Path]:
    """--manifest [NAME=]FILE: the polled manifest of each zoo (NAME may be left out when there is one zoo)."""
    out: dict[str, Path] = {}
    for g in given or []:
        name, _, path = g.partition("=") if "=" in g else (next(iter(zoos)) if len(zoos) == 1 else "", "", g)
        if name not in zoos:
            sys.exit(f"--manifest {g!r}: NAME=FILE with NAME one of {', '.join(zoos)}")
        out[name] = Path(path)
    return out


def merge(args: argparse.Namespace) -> int:
    zoos = zoo_map(args.zoo, args.mix)
    polled = named_files(args.manifest, zoos)
    found = gather(args.fetched)
    pieces, problems = good_pieces(found)
    for p in problems:
        print(f"merge: {p}")
    if not pieces:
        sys.exit("merge: no usable piece (part.00 missing or bad): nothing merged")
    first = next(iter(zoos.values()))
    staging = first.parent / f".{first.name}.incoming"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        complete, cut, other = unpack(pieces, staging, set(zoos))
        if cut:
            print(f"merge: the pack ends early ({cut}): what came whole is used")
        if other:
            print(f"merge: left out, not a zoo named here: {', '.join(sorted(o + '/' for o in other))}")
        came = {n: {c[len(n) + 1:] for c in complete if c.startswith(n + "/")} for n in zoos}
        if not any(came.values()):
            sys.exit(f"merge: the pack holds none of {', '.join(n + '/' for n in zoos)}: nothing merged"
                     + ("" if args.mix else " (--mix for a diffusion mix pack)"))
        for n in zoos:
            if not came[n]:
                print(f"merge: the pack holds no {n}/: {zoos[n]} unchanged")
        # every zoo checked before any is changed: a refusal leaves all as they were
        plans = [_plan(zoos[n], staging / n, n, came[n], polled.get(n), args) for n in zoos if came[n]]
        for plan in plans:
            _apply(plan, len(pieces))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    kind = "diff_resume" if args.mix else "v3_resume"
    for stale in Path(args.chunks).glob(f"g[0-9][0-9]/{kind}"):  # never carried once the home zoo moved on
        shutil.rmtree(stale)
        print(f"merge: removed the resume {'folder' if args.mix else 'pair'} {stale}, now stale: "
              "`qwen_v3_home.py resume` makes the next one")
    return 0


def _plan(zoo: Path, st: Path, name: str, complete: set[str], polled: Path | None, args: argparse.Namespace) -> dict:
    """What merging one zoo's part of the pack into `zoo` would do (`complete`: its names that came whole,
    relative to `st`); exits, nothing merged, where it must not."""
    for f in ("manifest.jsonl", "zoo.json"):
        if f not in complete:
            sys.exit(f"merge: the pack's {name}/{f} did not arrive: nothing merged")
    firsts: dict[str, dict] = {}
    for r in read_rows(st / "manifest.jsonl"):  # a diffusion build repeats a partly carried group's rows: the first stands
        firsts.setdefault(r["id"], r)
    lease_rows = list(firsts.values())
    pack = json.loads((st / "pack.json").read_text()) if "pack.json" in complete else {}
    if pack and pack.get("manifest_sha256") != sha256(st / "manifest.jsonl"):
        sys.exit(f"merge: the pack's {name}/manifest.jsonl is not the one pack.json describes: nothing merged")
    info = json.loads((st / "zoo.json").read_text())
    home_info_path = zoo / "zoo.json"
    if home_info_path.exists():
        home_info = json.loads(home_info_path.read_text())
        differ = [k for k in SAME_ZOO if home_info.get(k) != info.get(k)]
        if differ:
            sys.exit(f"merge: the lease built another zoo than {zoo} ({', '.join(differ)} differ): nothing merged")
        if home_info_path.read_bytes() != (st / "zoo.json").read_bytes():
            print(f"merge: {name}: the lease's zoo.json differs from home's in other fields (home's kept)")
    if polled:  # the manifest the polls brought: a snapshot of the same rows, maybe fewer
        snap = {r["id"]: r for r in read_rows(polled)}
        off = [r["id"] for r in lease_rows if r["id"] in snap and snap[r["id"]] != r]
        print(f"merge: {polled}: {len(snap)} rows, {len(off)} differing from the pack's" + (f" ({off[:3]})" if off else ""))
    arrived = {r["id"] for r in lease_rows if all(f in complete for f in adapter_files(r))}
    home_rows = read_rows(zoo / "manifest.jsonl") if (zoo / "manifest.jsonl").exists() else []
    home = {r["id"]: r for r in home_rows}
    add, same, conflict, kept_home, behind = [], [], [], [], []
    for r in lease_rows:
        i = r["id"]
        if i in arrived:
            if i not in home:
                add.append(r)
            elif home[i] == r:
                same.append(i)
            else:
                conflict.append(i)
        elif i in home:
            if home[i] != r:
                kept_home.append(i)  # rebuilt there (a partly carried group), not packed: home's pair stands
        else:
            behind.append(i)
    if conflict and not args.keep_home:
        sys.exit(f"merge: {len(conflict)} rows of {name}/ arrived that the home zoo holds otherwise ({conflict[:5]}): "
                 "nothing merged (--keep-home keeps the home rows and adapters for them)")
    return {"zoo": zoo, "st": st, "info": info, "pack": pack, "lease_rows": lease_rows, "home_rows": home_rows,
            "home": home, "arrived": arrived, "add": add, "same": same, "conflict": conflict, "kept_home": kept_home,
            "behind": behind}


def _apply(plan: dict, n_pieces: int) -> None:
    zoo, st, home, add, same = plan["zoo"], plan["st"], plan["home"], plan["add"], plan["same"]
    lease_rows, home_rows, pack = plan["lease_rows"], plan["home_rows"], plan["pack"]
    (zoo / "adapters").mkdir(parents=True, exist_ok=True)
    for r in add:
        dest = zoo / adapter_dir(r)
        if dest.exists():  # an adapter folder without a row (an interrupted merge): replaced
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(st / adapter_dir(r), dest)
    for i in same:
        if not has_adapter(zoo, home[i]):
            shutil.rmtree(zoo / adapter_dir(home[i]), ignore_errors=True)
            os.replace(st / adapter_dir(home[i]), zoo / adapter_dir(home[i]))
    if not (zoo / "zoo.json").exists():
        shutil.copy(st / "zoo.json", zoo / "zoo.json")
    new_ids = {r["id"]: r for r in add}
    order = [r["id"] for r in lease_rows]
    merged = [home.get(i) or new_ids[i] for i in order if i in home or i in new_ids]
    merged += [r for r in home_rows if r["id"] not in set(order)]
    write_rows(zoo / "manifest.jsonl", merged)
    missing_new = sorted(set(pack.get("new", [])) - plan["arrived"])
    note = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "device": pack.get("device"), "pieces": n_pieces,
            "lease_rows": len(lease_rows), "carried": pack.get("carried"), "new_in_pack": len(pack.get("new", [])),
            "added": len(add), "already_home": len(same), "conflicts_kept_home": len(plan["conflict"]),
            "rebuilt_not_packed": len(plan["kept_home"]), "left_behind": len(plan["behind"]), "home_rows": len(merged),
            "manifest_sha256": sha256(zoo / "manifest.jsonl")}
    with open(zoo / "leases.jsonl", "a") as f:
        f.write(json.dumps(note) + "\n")
    print(f"merge: {len(add)} adapters added, {len(same)} already home, {len(plan['conflict'])} conflicting (home kept), "
          f"{len(plan['kept_home'])} rebuilt there but not packed (home kept), {len(plan['behind'])} rows left behind "
          f"without their adapter (a later lease rebuilds their groups)"
          f"{'' if not missing_new else f'; {len(missing_new)} packed adapters missing'}")
    print(f"home zoo {zoo}: {len(merged)} rows of {plan['info']['recipe'].get('n_loras', '?')}, manifest sha256 "
          f"{note['manifest_sha256'][:16]}…")


def last_chunk(chunks: Path) -> Path:
    """The last chunk folder, checked against the part count (nparts: in g00 for the Qwen chunks' partNN, in
    the last for the diffusion chunks' mpartNN)."""
    dirs = sorted(d for d in chunks.glob("g[0-9][0-9]") if d.is_dir())
    if not dirs:
        sys.exit(f"resume: no chunk folders in {chunks} (make_chunks.py first)")
    counts = sorted(chunks.glob("g[0-9][0-9]/nparts"))
    n = int(counts[0].read_text()) if counts else None
    last = dirs[-1]
    if n is not None and (len(dirs) != n or not any((last / f"{p}{n - 1:02d}").exists() for p in ("part", "mpart"))):
        sys.exit(f"resume: {chunks} holds {len(dirs)} chunk folders but nparts says {n}: remake the chunks")
    return last


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def resume(args: argparse.Namespace) -> int:
    zoos = zoo_map(args.zoo, args.mix)
    if not args.mix and len(zoos) != 1:
        sys.exit("resume: one --zoo (the v3 zoo), or --mix")
    dest = Path(args.dest) if args.dest else last_chunk(Path(args.chunks)) / ("diff_resume" if args.mix else "v3_resume")
    shutil.rmtree(dest, ignore_errors=True)
    rows = {n: read_rows(z / "manifest.jsonl") if (z / "manifest.jsonl").exists() else [] for n, z in zoos.items()}
    lost: dict[str, list[dict]] = {n: [] for n in zoos}
    for n, f in named_files(args.lost, zoos).items():  # rows whose adapters were lost: carried, never merged home
        if not (zoos[n] / "zoo.json").is_file():
            sys.exit(f"resume: --lost {n}=...: {zoos[n]} needs the zoo's zoo.json (a lease's, or a kept copy)")
        have = {r["id"] for r in rows[n]}
        lost[n] = [r for r in read_rows(f) if r["id"] not in have]
        print(f"resume: {n}: {len(lost[n])} rows of {f} carried without adapters (the lease builds other groups; "
              "merge leaves them out of the home zoo, and a lease without --lost builds their groups again)")
    counts = " ".join(str(len(lost[n]) + len(r)) for n, r in rows.items())
    var = f'DIFF_ROWS="{counts}"' if args.mix else f"V3_ROWS={counts}"
    known = Path(args.known) if args.known else None
    if known is not None and (args.mix or not known.is_file()):
        sys.exit(f"resume: --known {known}: {'a v3 lease only' if args.mix else 'no such file'}")
    if not any(rows.values()) and not any(lost.values()) and known is None:
        print(f"resume: {', '.join(map(str, zoos.values()))} hold no rows: nothing to carry (the first lease starts "
              f"the zoo{'s' if len(zoos) > 1 else ''}): {var}")
        print(f"start: {MIX_START.format(counts, 1280) if args.mix else START.format(counts)}")
        return 0
    for n, z in zoos.items():
        lacking = [r["id"] for r in rows[n] if not has_adapter(z, r)]
        if lacking:
            sys.exit(f"resume: {len(lacking)} home rows of {z} lack their adapter ({lacking[:5]}); a merge only adds "
                     "rows with their adapters: restore them before carrying the manifest")
        rows[n] = lost[n] + rows[n]
    tars = [Path(args.tars or ".") / t for t in MIX_TARS] if args.mix else []
    if args.mix and (not args.tars or not all(t.is_file() for t in tars)):
        sys.exit(f"resume: --tars DIR must hold the first lease's {' and '.join(MIX_TARS)} (a poll brought them)")
    dest.mkdir(parents=True)
    names = []
    for n, z in zoos.items():
        if not rows[n]:
            print(f"resume: {z} holds no rows: its zoo starts from the beginning")
            continue
        pre = f"{n}." if args.mix else ""
        data = "".join(json.dumps(r) + "\n" for r in rows[n]).encode("utf-8")
        with open(dest / f"{pre}manifest.jsonl.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(data)
        shutil.copy(z / "zoo.json", dest / f"{pre}zoo.json")
        names += [f"{pre}manifest.jsonl.gz", f"{pre}zoo.json"]
        print(f"resume: {z}: {len(rows[n])} rows (manifest sha256 {hashlib.sha256(data).hexdigest()[:16]}…)")
    for t in tars:
        shutil.copy(t, dest / t.name)
        names.append(t.name)
    away = 0  # kept rows not home: rebuilt (--labels-from) or, on another GPU model, carried
    if known is not None:
        shutil.copy(known, dest / KNOWN)
        names.append(KNOWN)
        ids = {r["id"] for r in read_rows(known)}
        (home,) = rows.values()
        away = len(ids - {r["id"] for r in home})
        print(f"resume: {known}: {len(ids)} rows, {away} of them not home: the lease rebuilds their groups at training "
              "cost on the GPU model that built them (--labels-from), or carries them on another (V3_KNOWN=carry)")
    (dest / "SHA256SUMS").write_text("".join(f"{sha256(dest / n)}  {n}\n" for n in names))
    size, chunk = dir_bytes(dest), (0 if args.dest else dir_bytes(dest.parent))
    print(f"resume: {dest}: {size:,} bytes"
          + ("" if args.dest else f"; {dest.parent.name} now {chunk:,} bytes (cap {args.cap:,})"))
    if not args.dest and chunk > args.cap:
        shutil.rmtree(dest)
        sys.exit(f"resume: {dest.parent} would pass --cap {args.cap}: remake the chunks with make_chunks.py --room "
                 f"{max(2_000_000, 2 * size)} (the {'folder' if args.mix else 'pair'} removed)")
    print(f"start: {MIX_START.format(counts, 1400) if args.mix else START.format(counts)}")
    if known is not None:  # on another GPU model than built the kept rows, carry them instead of rebuilding
        print(f"start on another GPU model: {START.format(len(home) + away).replace('V3=1', 'V3=1 V3_KNOWN=carry')}")
    return 0


def status(args: argparse.Namespace) -> int:
    for zoo in zoo_map(args.zoo, args.mix).values():
        rows = read_rows(zoo / "manifest.jsonl") if (zoo / "manifest.jsonl").exists() else []
        info = json.loads((zoo / "zoo.json").read_text()) if (zoo / "zoo.json").exists() else {}
        folders = {d.name for d in (zoo / "adapters").iterdir()} if (zoo / "adapters").is_dir() else set()
        splits: dict[str, int] = {}
        for r in rows:
            splits[r["split"]] = splits.get(r["split"], 0) + 1
        print(json.dumps({"zoo": str(zoo), "rows": len(rows), "n_loras": info.get("recipe", {}).get("n_loras"),
                          "recipe_digest": info.get("recipe_digest"), "splits": splits,
                          "rows_without_adapter": len([r for r in rows if not has_adapter(zoo, r)]),
                          "adapters_without_row": len(folders - {PurePosixPath(adapter_dir(r)).name for r in rows}),
                          "leases": len((zoo / "leases.jsonl").read_text().splitlines()) if (zoo / "leases.jsonl").exists() else 0},
                         indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    zoo_help = "[NAME=]PATH, once per zoo: the home zoo for the pack's folder NAME (v3 if left out)"
    mix_help = "the diffusion mix's zoos (diff_pipeline.sh ZOO=mix: zoo/ and zoo_fonts/) instead of the Qwen v3 zoo"
    m = sub.add_parser("merge", help="a lease's fetched pieces into the home zoo(s)")
    m.add_argument("fetched", nargs="+", help="folders (or files) holding part.NN, SHA256SUMS, PACKED")
    m.add_argument("--zoo", action="append", help=zoo_help)
    m.add_argument("--mix", action="store_true", help=mix_help)
    m.add_argument("--manifest", action="append", help="[NAME=]FILE: a zoo's polled manifest (qwen_v3_manifest.jsonl.gz, "
                   "zoo_manifest.jsonl.gz, ...), to compare")
    m.add_argument("--keep-home", action="store_true", help="on conflicting rows keep the home zoo's")
    m.add_argument("--chunks", default=".chunks", help="the chunks whose resume pair a merge makes stale (removed)")
    r = sub.add_parser("resume", help="the next lease's resume pair (or, --mix, folder) into the last chunk")
    r.add_argument("--zoo", action="append", help=zoo_help)
    r.add_argument("--mix", action="store_true", help=mix_help)
    r.add_argument("--tars", help="--mix: the folder holding the first lease's inhouse_base_mix.tar.gz and inhouse_clip_mix.tar.gz")
    r.add_argument("--chunks", default=".chunks")
    r.add_argument("--dest", help="write it here instead (a rehearsal's $P/v3_resume or $P/diff_resume)")
    r.add_argument("--cap", type=int, default=54_000_000, help="bytes the last chunk may hold (make_chunks.py --cap)")
    r.add_argument("--known", help="v3: a kept cumulative manifest (.jsonl.gz) whose adapters were lost: the lease "
                   "builds with --labels-from it, its groups at training cost, the others measured (or, V3_KNOWN=carry "
                   "on another GPU model, carries its rows)")
    r.add_argument("--lost", action="append", help="[NAME=]MANIFEST: a kept manifest whose rows' adapters were lost "
                   "(the home kit gone): carried besides the home rows, so the lease builds only other groups")
    s = sub.add_parser("status", help="rows, splits, adapters of the home zoo(s)")
    s.add_argument("--zoo", action="append", help=zoo_help)
    s.add_argument("--mix", action="store_true", help=mix_help)
    args = ap.parse_args(argv)
    return {"merge": merge, "resume": resume, "status": status}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
