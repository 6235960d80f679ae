"""Device: what a lease of a zoo built over several leases packs (the list for `pack.sh DIR -T LIST`), for
qwen_v3.sh (v3/) and diff_pipeline.sh (zoo/, zoo_fonts/).

    python3 scripts/device/pack_list.py P DEVICE ZOO... [--extra NAME...] > P/pack.list

For each ZOO (a folder in P holding manifest.jsonl) it writes ZOO/pack.json: the ids of the rows that were not
carried (P/ZOO.carried.jsonl, the resume manifest the lease was seeded with; empty or absent: none), those of
them without adapter files, the rows carried, the device and the manifest's sha256. The list names every zoo's
manifest.jsonl, zoo.json and pack.json first (a fetch that stops early still brings them), then the adapter
folders (adapters/ID) of the new rows in manifest order, zoo after zoo, then the --extra names (a DoRA set).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

FILES = ("adapter_config.json", "adapter_model.safetensors")  # a PEFT folder's; a diffusers row names its one file


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()] if path.is_file() else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("p", type=Path)
    ap.add_argument("device")
    ap.add_argument("zoos", nargs="+")
    ap.add_argument("--extra", nargs="*", default=[])
    args = ap.parse_args(argv)
    head, adapters = [], []
    for z in args.zoos:
        zoo = args.p / z
        if not (zoo / "manifest.jsonl").is_file():
            print(f"pack: {z}: no manifest.jsonl, not packed", file=sys.stderr)
            continue
        carried = {r["id"] for r in rows_of(args.p / f"{z}.carried.jsonl")}
        rows = rows_of(zoo / "manifest.jsonl")
        path = {r["id"]: r["path"] for r in rows}
        new = list(dict.fromkeys(r["id"] for r in rows if r["id"] not in carried))  # a rebuilt group repeats rows
        folder = {i: str(Path(p).parent) if p.endswith(".safetensors") else p for i, p in path.items()}
        files = {i: [p] if p.endswith(".safetensors") else [f"{p}/{f}" for f in FILES] for i, p in path.items()}
        missing = [i for i in new if not all((zoo / f).is_file() for f in files[i])]
        info = {"carried": len(carried), "rows": len(rows), "new": new, "missing": missing, "device": args.device,
                "manifest_sha256": hashlib.sha256((zoo / "manifest.jsonl").read_bytes()).hexdigest()}
        (zoo / "pack.json").write_text(json.dumps(info, indent=1))
        head += [f"{z}/{n}" for n in ("manifest.jsonl", "zoo.json", "pack.json")]
        adapters += [f"{z}/{folder[i]}" for i in new if i not in missing]
        if missing:
            print(f"pack: {z}: {len(missing)} new rows without adapter files: {missing[:5]}", file=sys.stderr)
    sys.stdout.write("".join(f"{x}\n" for x in head + adapters + args.extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
