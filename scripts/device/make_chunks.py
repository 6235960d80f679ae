"""Split a (gzipped) model file into .chunks/gNN/ pieces that each fit one device call (64 MiB a call,
working tree included); .chunks/g00 also takes the extra files named (data tarball, wheels).

python3 scripts/device/make_chunks.py MODEL.gguf.gz [EXTRA ...] [--cap BYTES] [--room BYTES]

--room keeps that many bytes free in the last chunk, for what is added to it later (the Qwen v3 zoo's resume
pair, `qwen_v3_home.py resume`): when the remainder would not leave it, the remainder is cut in two halves.
"""
from __future__ import annotations

import argparse
import os
import shutil

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("extra", nargs="*")
ap.add_argument("--cap", type=int, default=64_500_000,
                help="bytes a call may carry besides the tracked tree (about 1.9 MB with models/*.safetensors moved out)")
ap.add_argument("--room", type=int, default=0, help="bytes to keep free in the last chunk")
args = ap.parse_args()
os.makedirs(".chunks/g00", exist_ok=True)
for f in args.extra:
    shutil.copy(f, ".chunks/g00/")
first = args.cap - sum(os.path.getsize(f) for f in args.extra)
left, sizes = os.path.getsize(args.model), []
while left > 0:
    sizes.append(min(left, first if not sizes else args.cap))
    left -= sizes[-1]
if sizes and sizes[-1] > (first if len(sizes) == 1 else args.cap) - args.room:  # no room: the last's bytes over two chunks
    last = sizes.pop()
    sizes += [last - last // 2, last // 2]
    if sizes[-2] > (first if len(sizes) == 2 else args.cap) or sizes[-1] > args.cap - args.room:
        raise SystemExit(f"--room {args.room}: too large for chunks of {args.cap} bytes")
with open(args.model, "rb") as fh:
    for i, n in enumerate(sizes):
        os.makedirs(f".chunks/g{i:02d}", exist_ok=True)
        with open(f".chunks/g{i:02d}/part{i:02d}", "wb") as out:
            out.write(fh.read(n))
i = len(sizes)
with open(".chunks/g00/nparts", "w") as out:  # qwen_start.sh checks that this many parts arrived
    out.write(f"{i}\n")
print(f"{i} chunks")
