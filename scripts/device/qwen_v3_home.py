"""Home side of the Qwen v3 zoo (README.md here, "Qwen v3"): 2,000 LoRAs built over about six leases, each on a
fresh machine, each bringing its own adapters home in pieces (qwen_v3.sh packs them, smol_fetch.sh fetches them).

    python3 scripts/device/qwen_v3_home.py merge FETCHED_DIR... [--zoo Z] [--manifest qwen_v3_manifest.jsonl.gz]
    python3 scripts/device/qwen_v3_home.py resume [--zoo Z] [--chunks .chunks] [--cap 54000000]
    python3 scripts/device/qwen_v3_home.py status [--zoo Z]

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
checks the chunk stays under --cap and prints the start command (V3_ROWS: the rows carried).
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
FILES = ("adapter_config.json", "adapter_model.safetensors")
SAME_ZOO = ("recipe_digest", "pool_digest", "targets", "base")
# V3_END: 1,500 s after the first call with all 30 device minutes left (`status`'s budget_left_s less 300 if not)
START = "bash scripts/device/qwen_park.sh && V3=1 V3_ROWS={} V3_END=1500 bash scripts/device/qwen_start.sh 1200 0"


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


def has_adapter(folder: Path) -> bool:
    return all((folder / f).is_file() and (folder / f).stat().st_size > 0 for f in FILES)


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


def unpack(pieces: list[Path], staging: Path) -> tuple[set[str], str | None]:
    """Stream the tar into `staging`; the names whose data arrived whole, and why it stopped early if it did."""
    complete: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BufferedReader(Pieces(pieces), 1 << 20), mode="r|") as tf:
            for m in tf:
                parts = PurePosixPath(m.name).parts
                if not parts or parts[0] != "v3" or ".." in parts or m.name.startswith("/"):
                    raise SystemExit(f"merge: unexpected name in the pack: {m.name!r}")
                dest = staging.joinpath(*parts)
                if m.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(m)
                    with open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
                    if dest.stat().st_size != m.size:
                        return complete, f"{m.name} cut short"
                    complete.add(m.name)
    except (tarfile.ReadError, tarfile.StreamError, EOFError, OSError) as exc:
        return complete, f"{type(exc).__name__}: {exc}"
    return complete, None


def merge(args: argparse.Namespace) -> int:
    zoo = Path(args.zoo)
    found = gather(args.fetched)
    pieces, problems = good_pieces(found)
    for p in problems:
        print(f"merge: {p}")
    if not pieces:
        sys.exit("merge: no usable piece (part.00 missing or bad): nothing merged")
    staging = zoo.parent / f".{zoo.name}.incoming"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        complete, cut = unpack(pieces, staging)
        if cut:
            print(f"merge: the pack ends early ({cut}): what came whole is used")
        return _merge_staged(zoo, staging / "v3", complete, len(pieces), args)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merge_staged(zoo: Path, st: Path, complete: set[str], n_pieces: int, args: argparse.Namespace) -> int:
    for name in ("manifest.jsonl", "zoo.json"):
        if f"v3/{name}" not in complete:
            sys.exit(f"merge: the pack's {name} did not arrive: nothing merged")
    lease_rows = read_rows(st / "manifest.jsonl")
    pack = json.loads((st / "pack.json").read_text()) if "v3/pack.json" in complete else {}
    if pack and pack.get("manifest_sha256") != sha256(st / "manifest.jsonl"):
        sys.exit("merge: the pack's manifest is not the one pack.json describes: nothing merged")
    info = json.loads((st / "zoo.json").read_text())
    home_info_path = zoo / "zoo.json"
    if home_info_path.exists():
        home_info = json.loads(home_info_path.read_text())
        differ = [k for k in SAME_ZOO if home_info.get(k) != info.get(k)]
        if differ:
            sys.exit(f"merge: the lease built another zoo than {zoo} ({', '.join(differ)} differ): nothing merged")
        if home_info_path.read_bytes() != (st / "zoo.json").read_bytes():
            print("merge: the lease's zoo.json differs from home's in other fields (home's kept)")
    if args.manifest:  # the manifest the polls brought: a snapshot of the same rows, maybe fewer
        polled = {r["id"]: r for r in read_rows(Path(args.manifest))}
        off = [r["id"] for r in lease_rows if r["id"] in polled and polled[r["id"]] != r]
        print(f"merge: {args.manifest}: {len(polled)} rows, {len(off)} differing from the pack's"
              + (f" ({off[:3]})" if off else ""))
    arrived = {r["id"] for r in lease_rows
               if all(f"v3/{r['path']}/{f}" in complete for f in FILES)}
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
        sys.exit(f"merge: {len(conflict)} rows arrived that the home zoo holds otherwise ({conflict[:5]}): nothing "
                 "merged (--keep-home keeps the home rows and adapters for them)")
    (zoo / "adapters").mkdir(parents=True, exist_ok=True)
    for r in add:
        dest = zoo / r["path"]
        if dest.exists():  # an adapter folder without a row (an interrupted merge): replaced
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(st / r["path"], dest)
    for i in same:
        if not has_adapter(zoo / home[i]["path"]):
            shutil.rmtree(zoo / home[i]["path"], ignore_errors=True)
            os.replace(st / home[i]["path"], zoo / home[i]["path"])
    if not home_info_path.exists():
        shutil.copy(st / "zoo.json", home_info_path)
    new_ids = {r["id"]: r for r in add}
    order = [r["id"] for r in lease_rows]
    merged = [home.get(i) or new_ids[i] for i in order if i in home or i in new_ids]
    merged += [r for r in home_rows if r["id"] not in set(order)]
    write_rows(zoo / "manifest.jsonl", merged)
    missing_new = sorted(set(pack.get("new", [])) - arrived)
    note = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "device": pack.get("device"), "pieces": n_pieces,
            "lease_rows": len(lease_rows), "carried": pack.get("carried"), "new_in_pack": len(pack.get("new", [])),
            "added": len(add), "already_home": len(same), "conflicts_kept_home": len(conflict),
            "rebuilt_not_packed": len(kept_home), "left_behind": len(behind), "home_rows": len(merged),
            "manifest_sha256": sha256(zoo / "manifest.jsonl")}
    with open(zoo / "leases.jsonl", "a") as f:
        f.write(json.dumps(note) + "\n")
    print(f"merge: {len(add)} adapters added, {len(same)} already home, {len(conflict)} conflicting (home kept), "
          f"{len(kept_home)} rebuilt there but not packed (home kept), {len(behind)} rows left behind without "
          f"their adapter (a later lease rebuilds their groups){'' if not missing_new else f'; {len(missing_new)} packed adapters missing'}")
    print(f"home zoo {zoo}: {len(merged)} rows of {info['recipe'].get('n_loras', '?')}, manifest sha256 "
          f"{note['manifest_sha256'][:16]}…")
    for stale in Path(args.chunks).glob("g[0-9][0-9]/v3_resume"):  # never carried once the home zoo moved on
        shutil.rmtree(stale)
        print(f"merge: removed the resume pair {stale}, now stale: `qwen_v3_home.py resume` makes the next one")
    return 0


def last_chunk(chunks: Path) -> Path:
    dirs = sorted(d for d in chunks.glob("g[0-9][0-9]") if d.is_dir())
    if not dirs:
        sys.exit(f"resume: no chunk folders in {chunks} (make_chunks.py first)")
    n = int((chunks / "g00" / "nparts").read_text()) if (chunks / "g00" / "nparts").exists() else None
    last = dirs[-1]
    if n is not None and (len(dirs) != n or not (last / f"part{n - 1:02d}").exists()):
        sys.exit(f"resume: {chunks} holds {len(dirs)} chunk folders but nparts says {n}: remake the chunks")
    return last


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def resume(args: argparse.Namespace) -> int:
    zoo = Path(args.zoo)
    dest = Path(args.dest) if args.dest else last_chunk(Path(args.chunks)) / "v3_resume"
    shutil.rmtree(dest, ignore_errors=True)
    rows = read_rows(zoo / "manifest.jsonl") if (zoo / "manifest.jsonl").exists() else []
    if not rows:
        print(f"resume: {zoo} holds no rows: nothing to carry (the first lease starts the zoo): V3_ROWS=0")
        print(f"start: {START.format(0)}")
        return 0
    lacking = [r["id"] for r in rows if not has_adapter(zoo / r["path"])]
    if lacking:
        sys.exit(f"resume: {len(lacking)} home rows lack their adapter ({lacking[:5]}); a merge only adds rows "
                 "with their adapters: restore them before carrying the manifest")
    dest.mkdir(parents=True)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
    with open(dest / "manifest.jsonl.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(data)
    shutil.copy(zoo / "zoo.json", dest / "zoo.json")
    (dest / "SHA256SUMS").write_text("".join(f"{sha256(dest / n)}  {n}\n" for n in ("manifest.jsonl.gz", "zoo.json")))
    size, chunk = dir_bytes(dest), (0 if args.dest else dir_bytes(dest.parent))
    print(f"resume: {dest}: {len(rows)} rows (manifest sha256 {hashlib.sha256(data).hexdigest()[:16]}…), {size:,} bytes"
          + ("" if args.dest else f"; {dest.parent.name} now {chunk:,} bytes (cap {args.cap:,})"))
    if not args.dest and chunk > args.cap:
        shutil.rmtree(dest)
        sys.exit(f"resume: {dest.parent} would pass --cap {args.cap}: remake the chunks with make_chunks.py --room "
                 f"{max(2_000_000, 2 * size)} (the pair removed)")
    print(f"start: {START.format(len(rows))}")
    return 0


def status(args: argparse.Namespace) -> int:
    zoo = Path(args.zoo)
    rows = read_rows(zoo / "manifest.jsonl") if (zoo / "manifest.jsonl").exists() else []
    info = json.loads((zoo / "zoo.json").read_text()) if (zoo / "zoo.json").exists() else {}
    have = {d.name for d in (zoo / "adapters").iterdir() if has_adapter(d)} if (zoo / "adapters").is_dir() else set()
    ids = {r["id"] for r in rows}
    splits: dict[str, int] = {}
    for r in rows:
        splits[r["split"]] = splits.get(r["split"], 0) + 1
    print(json.dumps({"zoo": str(zoo), "rows": len(rows), "n_loras": info.get("recipe", {}).get("n_loras"),
                      "recipe_digest": info.get("recipe_digest"), "splits": splits,
                      "rows_without_adapter": len([r for r in rows if Path(r["path"]).name not in have]),
                      "adapters_without_row": len(have - ids),
                      "leases": len((zoo / "leases.jsonl").read_text().splitlines()) if (zoo / "leases.jsonl").exists() else 0},
                     indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="a lease's fetched pieces into the home zoo")
    m.add_argument("fetched", nargs="+", help="folders (or files) holding part.NN, SHA256SUMS, PACKED")
    m.add_argument("--zoo", default=ZOO)
    m.add_argument("--manifest", help="the lease's polled qwen_v3_manifest.jsonl.gz, to compare")
    m.add_argument("--keep-home", action="store_true", help="on conflicting rows keep the home zoo's")
    m.add_argument("--chunks", default=".chunks", help="the chunks whose resume pair a merge makes stale (removed)")
    r = sub.add_parser("resume", help="the next lease's resume pair into the last chunk")
    r.add_argument("--zoo", default=ZOO)
    r.add_argument("--chunks", default=".chunks")
    r.add_argument("--dest", help="write the pair here instead (a rehearsal's $P/v3_resume)")
    r.add_argument("--cap", type=int, default=54_000_000, help="bytes the last chunk may hold (make_chunks.py --cap)")
    s = sub.add_parser("status", help="rows, splits, adapters of the home zoo")
    s.add_argument("--zoo", default=ZOO)
    args = ap.parse_args(argv)
    return {"merge": merge, "resume": resume, "status": status}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
