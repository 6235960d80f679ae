"""Header validation against the safetensors library on the same mutated inputs, and a fixed-seed
slice of bench/fuzz.py (the full run's table is in bench/results/fuzz.md)."""
from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest
import torch
from helpers import REAL, load_script
from safetensors import safe_open
from safetensors.torch import save_file

from lolscan.errors import InputError
from lolscan.formats.stheader import parse_header


def _fuzz():
    return load_script("bench/fuzz.py")


def _library_accepts(path: Path) -> tuple[bool, dict]:
    try:
        with safe_open(str(path), "pt") as fh:
            return True, {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception:  # SafetensorError and friends: rejected
        return False, {}


def test_header_checks_are_at_least_as_strict_as_the_safetensors_library(tmp_path):
    """Mutated headers of real files (the fuzzer's header mutator, fixed seed): every input the library
    rejects, lolscan rejects too, with an InputError; where both accept they see the same tensors."""
    fuzz = _fuzz()
    seeds = []
    g = torch.Generator().manual_seed(0)
    save_file({"lora_unet_a.lora_down.weight": torch.randn(2, 4, generator=g), "lora_unet_a.alpha": torch.tensor(2.0),
               "lora_unet_a.lora_up.weight": torch.randn(3, 2, generator=g).half()}, tmp_path / "small.safetensors", metadata={"k": "v"})
    seeds.append((tmp_path / "small.safetensors").read_bytes())
    if (REAL / "gradience_tiny_lora").is_dir():
        seeds.append((REAL / "gradience_tiny_lora" / "adapter_model.safetensors").read_bytes())
    rng = random.Random(24)
    path = tmp_path / "m.safetensors"
    counts = {"both reject": 0, "both accept": 0, "only lolscan rejects": 0}
    for i in range(600):
        header, data = fuzz._split(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            header, data = fuzz.mutate_header(header, data, rng)
        path.write_bytes(struct.pack("<Q", len(header)) + header + data)
        theirs, tensors = _library_accepts(path)
        try:
            _, layout = parse_header(header, len(data), path)
            ours = True
        except InputError:
            ours = False
        assert ours <= theirs, f"input {i}: lolscan accepts what safetensors rejects: {header[:300]!r}"
        if ours:
            assert {k: list(v[1]) for k, v in layout.items()} == tensors, f"input {i}"
        counts["both accept" if ours else ("both reject" if not theirs else "only lolscan rejects")] += 1
    assert min(counts.values()) > 0, counts  # the mutations reach every outcome


@pytest.mark.parametrize("header, data, needle", [
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 8, "bytes after the last tensor"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', b"\0" * 8, "unused bytes before tensor"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}',
     b"\0" * 6, "overlap"),
    (b'{"\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4, "not valid UTF-8"),
    (b'{"__metadata__": {"a": "\\udc00"}}', b"", "__metadata__"),
    (b'{"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}', b"\0" * 4, "malformed shape"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}\x00', b"\0" * 4, "not valid JSON"),
])
def test_each_rule_of_the_library_is_kept(tmp_path, header, data, needle):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    assert not _library_accepts(path)[0]
    with pytest.raises(InputError, match=needle):
        parse_header(header, len(data), path)


def test_fuzz_slice_fixed_seed(tmp_path):
    """A small fixed-seed run of every in-process entry point: no uncaught exception, nothing slow, the
    light reader agrees with the full reader on every file it decides, and both outcomes occur."""
    fuzz = _fuzz()
    out = tmp_path / "tallies.json"
    fuzz.main(["--entries", "header,config,load,fast", "--n", "250", "--seconds", "30", "--seed", "7",
               "--scratch", str(tmp_path / "scratch"), "--json", str(out)])
    for t in json.loads(out.read_text()):
        assert t["inputs"] == 250, t
        assert t.get("uncaught", 0) == 0 and t["slow"] == 0 and t["disagree"] == 0, t
        assert t.get("ok", 0) > 0 and t.get("clean", 0) > 0, t
        if t["entry"] == "fast":
            assert t["decided"] > 50, t
