"""Split a (gzipped) model file into .chunks/gNN/ pieces that each fit one device call (64 MiB a call,
working tree included); .chunks/g00 also takes the extra files named (data tarball, wheels).

python3 scripts/device/make_chunks.py MODEL.gguf.gz [EXTRA ...] [--cap BYTES]
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
args = ap.parse_args()
os.makedirs(".chunks/g00", exist_ok=True)
for f in args.extra:
    shutil.copy(f, ".chunks/g00/")
first = args.cap - sum(os.path.getsize(f) for f in args.extra)
with open(args.model, "rb") as fh:
    i = 0
    while b := fh.read(first if i == 0 else args.cap):
        os.makedirs(f".chunks/g{i:02d}", exist_ok=True)
        with open(f".chunks/g{i:02d}/part{i:02d}", "wb") as out:
            out.write(b)
        i += 1
with open(".chunks/g00/nparts", "w") as out:  # qwen_start.sh checks that this many parts arrived
    out.write(f"{i}\n")
print(f"{i} chunks")
