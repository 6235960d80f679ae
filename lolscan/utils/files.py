"""File helpers every layer shares: streamed hashes (LoRA files and manifests can be large)."""
from __future__ import annotations

import hashlib
import os

CHUNK = 1 << 20

# The files of a PEFT adapter folder: what lolscan.sources downloads, lolscan.formats reads and a
# folder scan recognises.
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")


def sha256_file(path: str | os.PathLike) -> str:
    """Lower-case hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()
