"""Structure-aware fuzzing of every entry point that reads untrusted input.

Seeds are small adapters cut from the real fixtures (`../shared/fixtures/real/`: kohya-free SD1.5
diffusers, cloneofsimo, a PEFT folder) plus synthetic kohya/LyCORIS/DoRA/PEFT-LoKr files built here;
each input is a seed put through one to three mutators that know the format (header entries: dtypes,
shapes, offsets, keys, metadata, nesting, huge integers, NaN constants, gaps, overlaps, trailing bytes;
tensors: rank 0, 0-d/1-D/6-D factors, NaN/Inf, integer dtypes, odd alphas, renamed roles, OFT/IA³
keys; adapter_config.json: hostile r/alpha values and rank_pattern/alpha_pattern keys drawn from a
small regex grammar, including the catastrophic ones; raw bytes: flips, cuts, appends).

Entry points and what counts as what, per input:

* ``header``: `lolscan.formats.stheader.parse_header` on the mutated header bytes;
* ``fast``: what a reader process does with a file (the light reader `LightReader.read`; the full
  reader `scoring._Reader` where the light one declines), classified by the row it gives (an
  "unexpected …" row of the full reader's last-resort catch counts as uncaught); the full reader also
  reads every file the light reader decides, and both must give the same status and message, and an
  ``ok`` row the same packed bytes (counted as a disagreement otherwise);
* ``load``: `lolscan.load` on the mutated file or PEFT folder;
* ``config``: `read_config` and the scale rules (`peft_scale`, `peft_lycoris_scale`) over the seed's
  module names, on a mutated adapter_config.json;
* ``inspect-inproc`` / ``predict-inproc``: the CLI in this process (`lolscan.cli.app.main` with sys.argv
  set, stdout/stderr captured; see `fuzz_cli_inproc`): ``lolscan inspect`` (table or ``--json``) on
  every seed's mutations, ``lolscan predict`` with the bundled default checkpoint (JSON on stdout, or an
  ``--output`` .json/.jsonl) on mutated copies of a bundled example (60 %) or of any seed; one input in
  ten gets a file name holding markup, spaces and non-ASCII. Each run must keep the CLI's promises
  (`check_cli_run`, `check_output_file`, an untouched download cache); a broken one counts as uncaught;
* ``inspect`` / ``predict``: the CLI in a subprocess (``lolscan inspect --json``, ``lolscan predict``
  with the bundled default checkpoint on mutated copies of a bundled example), a small cross-check.

Outcome classes: ``ok`` (read), ``clean`` (a `LolscanError`; for the CLI: exit 3/4 with ``error:``
lines only), ``uncaught`` (any other exception; for the CLI: a traceback or another exit code), and
``slow`` (over 2 s in process; for the CLI over 2 s more CPU time, user + system, than the median run
of the unmutated seed), counted whatever the class. Every run is bounded by ``--seconds`` per entry point.

    python bench/fuzz.py --entries header,config,load,fast --n 100000 --seconds 600 --seed 1
    python bench/fuzz.py --entries inspect-inproc,predict-inproc --n 100000 --seconds 36000 --seed 1
    python bench/fuzz.py --entries inspect,predict --n 200 --seconds 600 --seed 1
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lolscan  # noqa: E402
from lolscan.errors import LolscanError  # noqa: E402

REAL = REPO.parent / "shared" / "fixtures" / "real"
EXAMPLE = REPO / "models" / "examples" / "lora-00553"
SLOW_S = 2.0
ENTRIES = ("header", "fast", "load", "config", "inspect-inproc", "predict-inproc", "inspect", "predict")


# ---- seeds ------------------------------------------------------------------------------------------
def _subset(tensors: dict[str, torch.Tensor], modules: int, rng: random.Random) -> dict[str, torch.Tensor]:
    """The tensors of a few modules (all their roles) of a real file, so that each input stays small."""
    from lolscan.formats.grouping import split_key

    by_module: dict[str, list[str]] = {}
    for k in tensors:
        hit = split_key(k)
        by_module.setdefault(hit[0] if hit else k.rsplit(":", 1)[0], []).append(k)  # cloneofsimo: `unet:N:up`
    keys = list(by_module)
    chosen = keys[:modules] if len(keys) <= modules else sorted(rng.sample(keys, modules), key=keys.index)
    return {k: tensors[k] for m in chosen for k in by_module[m]}


def make_seeds(root: Path, rng: random.Random, real: Path = REAL) -> list[Path]:
    """Seed adapters (files and PEFT folders) under ``root`` (emptied first)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    seeds: list[Path] = []
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))

    def add_file(name: str, t: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        save_file({k: v.contiguous() for k, v in t.items()}, str(root / name), metadata=metadata)
        seeds.append(root / name)

    for name in ("catundchat_sd15_pytorch_lora_weights.safetensors", "cloneofsimo_analog_svd_rank4.safetensors"):
        src = real / name
        if src.is_file():
            from safetensors import safe_open

            with safe_open(str(src), "pt") as fh:
                md = fh.metadata() or {}
            add_file(f"real_{name[:12]}.safetensors", _subset(load_file(str(src)), 3, rng), md)
    peft_src = real / "gradience_tiny_lora"
    if peft_src.is_dir():
        d = root / "real_peft"
        d.mkdir()
        shutil.copy(peft_src / "adapter_config.json", d / "adapter_config.json")
        save_file(_subset(load_file(str(peft_src / "adapter_model.safetensors")), 2, rng), str(d / "adapter_model.safetensors"))
        seeds.append(d)
    # kohya LoRA with alphas and a conv, f16
    t = {}
    for key, n, m in (("lora_unet_down_blocks_0_attentions_0_proj_in", 16, 12), ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 8, 8)):
        t[f"{key}.lora_down.weight"] = torch.randn(4, m, generator=g).half()
        t[f"{key}.lora_up.weight"] = torch.randn(n, 4, generator=g).half()
        t[f"{key}.alpha"] = torch.tensor(2.0).half()
    t["lora_unet_conv_in.lora_down.weight"] = torch.randn(2, 4, 3, 3, generator=g).half()
    t["lora_unet_conv_in.lora_up.weight"] = torch.randn(8, 2, 1, 1, generator=g).half()
    add_file("kohya.safetensors", t, {"ss_network_module": "networks.lora"})
    # LyCORIS LoHa + LoKr + Tucker LoCon
    p = "lora_unet_down_blocks_0_resnets_0_"
    t = {f"{p}conv1.hada_w1_a": torch.randn(8, 2, generator=g), f"{p}conv1.hada_w1_b": torch.randn(2, 36, generator=g),
         f"{p}conv1.hada_w2_a": torch.randn(8, 2, generator=g), f"{p}conv1.hada_w2_b": torch.randn(2, 36, generator=g),
         f"{p}conv1.alpha": torch.tensor(1.0),
         f"{p}conv2.lokr_w1": torch.randn(2, 2, generator=g), f"{p}conv2.lokr_w2_a": torch.randn(4, 2, generator=g),
         f"{p}conv2.lokr_w2_b": torch.randn(2, 18, generator=g), f"{p}conv2.alpha": torch.tensor(2.0),
         f"{p}time_emb_proj.lora_down.weight": torch.randn(2, 4, 1, 1, generator=g),
         f"{p}time_emb_proj.lora_mid.weight": torch.randn(2, 2, 3, 3, generator=g),
         f"{p}time_emb_proj.lora_up.weight": torch.randn(6, 2, 1, 1, generator=g)}
    add_file("lycoris.safetensors", t, {"ss_network_module": "lycoris.kohya"})
    # PEFT LoRA with DoRA, rsLoRA and patterns; PEFT LoKr
    d = root / "peft_dora"
    d.mkdir()
    t = {}
    for name, n, m in (("model.layers.0.self_attn.q_proj", 8, 8), ("model.layers.0.mlp.up_proj", 12, 8)):
        t[f"base_model.model.{name}.lora_A.weight"] = torch.randn(4, m, generator=g)
        t[f"base_model.model.{name}.lora_B.weight"] = torch.randn(n, 4, generator=g)
        t[f"base_model.model.{name}.lora_magnitude_vector"] = torch.rand(n, generator=g) + 0.5
    save_file(t, str(d / "adapter_model.safetensors"))
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": True, "use_dora": True,
                                                       "rank_pattern": {"up_proj": 4}, "alpha_pattern": {"q_proj": 3}}))
    seeds.append(d)
    d = root / "peft_lokr"
    d.mkdir()
    save_file({"base_model.model.fc.lokr_w1": torch.randn(2, 2, generator=g), "base_model.model.fc.lokr_w2_a": torch.randn(3, 1, generator=g),
               "base_model.model.fc.lokr_w2_b": torch.randn(1, 4, generator=g)}, str(d / "adapter_model.safetensors"))
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LOKR", "r": 1, "alpha": 2, "rank_pattern": {}, "alpha_pattern": {}}))
    seeds.append(d)
    return seeds


# ---- mutators ---------------------------------------------------------------------------------------
def _split(raw: bytes) -> tuple[bytes, bytes]:
    n = int.from_bytes(raw[:8], "little")
    return raw[8 : 8 + n], raw[8 + n :]


def _join(header: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


BAD_DTYPES = ["F32", "F16", "BF16", "F64", "I32", "BOOL", "U8", "F8_E4M3", "Q9", "f32", "", None, 3, ["F32"], {"a": 1}]
WEIRD_KEYS = ["\\ud800", "é", "\\u0000", "x" * 5000, "lora_unet_" + "a" * 300, "..", "base_model.model.", ".lora_A.weight"]


def _huge_int(rng: random.Random) -> str:
    return rng.choice(["18446744073709551615", "18446744073709551616", "9" * rng.choice([30, 4400, 5000]), "-1", "1e3", "1.0", "true", "null", "NaN"])


def mutate_header(header: bytes, data: bytes, rng: random.Random) -> tuple[bytes, bytes]:
    """One structure-aware change of a safetensors header (and its data region)."""
    try:
        return _mutate_header(header, data, rng)
    except (TypeError, KeyError, AttributeError, ValueError, RecursionError):  # a mutation that does not apply to this header
        return header, data


def _mutate_header(header: bytes, data: bytes, rng: random.Random) -> tuple[bytes, bytes]:
    try:
        h = json.loads(header)
    except (ValueError, RecursionError):
        h = None
    kind = rng.randrange(16)
    if not isinstance(h, dict) or kind == 0:  # raw text edits
        b = bytearray(header)
        for _ in range(rng.randint(1, 4)):
            if b:
                b[rng.randrange(len(b))] = rng.choice(b'{}[]",:0123456789-.e\\ntfa\x00\xff ')
        return bytes(b), data
    tensors = [k for k in h if k != "__metadata__"]
    key = rng.choice(tensors) if tensors else None
    if kind == 1 and key:
        h[key]["dtype"] = rng.choice(BAD_DTYPES)
    elif kind == 2 and key:
        shape = h[key].get("shape")
        choice = rng.randrange(6)
        if choice == 0:
            h[key]["shape"] = []
        elif choice == 1 and isinstance(shape, list) and shape:
            h[key]["shape"] = shape[:-1]
        elif choice == 2:
            h[key]["shape"] = (shape or []) + [1] * rng.randint(1, 4)
        elif choice == 3 and isinstance(shape, list) and shape:
            i = rng.randrange(len(shape))
            h[key]["shape"][i] = rng.choice([0, -1, 1, True, 2.0, None, "3", 2 ** 64, shape[i] * 2])
        else:
            h[key]["shape"] = rng.choice([None, "1,2", {"a": 1}, [[1]]])
    elif kind == 3 and key:
        off = h[key].get("data_offsets")
        if isinstance(off, list) and len(off) == 2 and all(isinstance(x, int) for x in off):
            b, e = off
            delta = rng.choice([-8, -4, -2, -1, 1, 2, 4, 8, len(data), -b])
            h[key]["data_offsets"] = rng.choice([[b + delta, e + delta], [b, e + delta], [e, b], [b + delta, e], [0, e - b]])
        else:
            h[key]["data_offsets"] = rng.choice([[0], [0, 1, 2], None, ["0", "4"]])
    elif kind == 4 and key:  # rename a key: odd text, other roles
        new = rng.choice(WEIRD_KEYS + [key.replace("down", "up"), key.replace("lora_", "hada_"), key + ".weight", key.replace(".", "_"),
                                       key.replace("lora_A", "oft_R"), key.replace("lora_down.weight", "ia3_l"), key.rsplit(".", 1)[0] + ".alpha"])
        h[new] = h.pop(key)
    elif kind == 5:
        h["__metadata__"] = rng.choice([None, [], {"a": 1}, {"a": None}, {"ss_network_module": "lycoris.kohya"}, {"lora_adapter_metadata": "{"},
                                         {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": rng.choice([-1, 1e309, "x", None, 4]), "unet.r": 0})}])
    elif kind == 6 and key:
        del h[key]
    elif kind == 7 and key:
        h[key + "_copy"] = dict(h[key])  # overlapping data
    elif kind == 8:
        depth = rng.choice([10, 1000, 100000])
        text = json.dumps(h)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
        return text.encode(), data
    elif kind == 9 and key:
        text = json.dumps(h).replace(json.dumps(h[key]["shape"]), "[" + _huge_int(rng) + "]", 1) if isinstance(h[key], dict) else json.dumps(h)
        return text.encode(), data
    elif kind == 10:  # gap, trailing bytes, short data
        return header, rng.choice([data + b"\0" * rng.randint(1, 16), data[: max(0, len(data) - rng.randint(1, 16))], b"\0" * 4 + data])
    elif kind == 11:
        return header + b" " * rng.randint(1, 8), data  # padding (valid)
    elif kind == 12:
        return json.dumps(h).encode() + rng.choice([b"\x00", b"}", b" {}", b"\n"]), data
    elif kind == 13:
        return rng.choice([b"", b"[]", b"null", b"{", b'{"a": NaN}', b'{"a": Infinity}', b"\xff\xfe"]), data
    elif kind == 14 and key:
        h[key] = rng.choice([None, [], "x", {"dtype": "F32"}, {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": [1]}])
    else:
        return header, data
    return json.dumps(h).encode(), data


def mutate_tensors(t: dict[str, torch.Tensor], rng: random.Random) -> dict[str, torch.Tensor]:
    """One semantic change of the tensors (written back as a valid safetensors file)."""
    try:
        return _mutate_tensors(t, rng)
    except (RuntimeError, NotImplementedError, TypeError, ValueError, IndexError):  # not for this dtype/shape
        return dict(t)


def _mutate_tensors(t: dict[str, torch.Tensor], rng: random.Random) -> dict[str, torch.Tensor]:
    t = dict(t)
    if not t:
        return t
    key = rng.choice(list(t))
    v = t[key]
    kind = rng.randrange(12)
    if kind == 0:  # rank 0 / empty
        t[key] = torch.zeros(*([0] + list(v.shape[1:]))) if v.ndim else torch.zeros(0)
    elif kind == 1:
        t[key] = rng.choice([torch.tensor(1.0), torch.randn(3), torch.randn(2, 2, 3, 3, 1, 1), torch.randn(1, 1, 1)])
    elif kind == 2 and v.is_floating_point() and v.numel():
        v = v.clone()
        v.view(-1)[rng.randrange(v.numel())] = rng.choice([float("nan"), float("inf"), -float("inf"), 1e38])
        t[key] = v
    elif kind == 3:
        t[key] = v.to(rng.choice([torch.int32, torch.bool, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.uint8]))
    elif kind == 4:  # odd alphas
        mod = key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]
        t[mod + ".alpha"] = rng.choice([torch.tensor(float("nan")), torch.tensor(float("inf")), torch.tensor(-4.0), torch.tensor(0.0),
                                        torch.tensor([1.0, 2.0]), torch.tensor(3, dtype=torch.int32), torch.tensor(1e30)])
    elif kind == 5:
        del t[key]
    elif kind == 6:
        mod = key.rsplit(".", 2)[0]
        t[mod + rng.choice([".oft_blocks", ".ia3_l", ".lora_mid.weight", ".dora_scale", ".lora_B.bias", ".diff", ".hada_t1", ".lokr_t2", ".scale"])] = torch.randn(2, 2, 3, 3)
    elif kind == 7:
        t[key] = v.reshape(-1, *v.shape[2:]) if v.ndim > 2 else v.mT.contiguous() if v.ndim == 2 else v
    elif kind == 8:
        t[key.replace("down", "up") if "down" in key else key.replace("up", "down")] = v
    elif kind == 9:
        t[key] = torch.randn(*[max(1, d * rng.choice([1, 2])) for d in v.shape]) if v.ndim else v
    elif kind == 10:
        t[rng.choice(WEIRD_KEYS[1:]).replace("\\u0000", "z") + ".lora_down.weight"] = torch.randn(2, 3)
    else:
        t[key] = v * rng.choice([0.0, -1.0, 1e20])
    return t


GRAMMAR = ["q_proj", "proj", "v_proj", "up_proj", "fc", "c_attn", "layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj",
           r"layers\.\d+\.mlp", "^model.*", ".*q_proj", "(q|v)_proj", "(.*)*x$", "(a+)+$", "(a|aa)*b", ".*.*.*=", "(", "[",
           r"(?i)Q_PROJ", r"\1", "(?=q)q_proj", "x" * 300, "", ".", "*", "a{1,100000}", "(?P<n>q)_proj", "é"]


def mutate_config(config: dict[str, Any], rng: random.Random) -> str:
    """An adapter_config.json text with one or two hostile values."""
    c = json.loads(json.dumps(config))
    for _ in range(rng.randint(1, 2)):
        field = rng.choice(["r", "lora_alpha", "alpha", "use_rslora", "rank_pattern", "alpha_pattern", "peft_type", "raw"])
        if field in ("r", "lora_alpha", "alpha"):
            c[field] = rng.choice([0, -1, 1, 8, 1.5, None, [1], "8", "x", True, 10 ** 400, float("inf"), float("nan"), 1e308, -0.0])
            if rng.random() < 0.2:
                c.pop(field, None)
        elif field == "use_rslora":
            c[field] = rng.choice([True, False, None, "false", 1, []])
        elif field in ("rank_pattern", "alpha_pattern"):
            if rng.random() < 0.15:
                c[field] = rng.choice(["q_proj", [], None, 3])
            else:
                keys = rng.sample(GRAMMAR, rng.randint(1, 4))
                c[field] = {k: rng.choice([1, 2, 4, 16, 0, -1, 2.5, None, "4", float("inf")]) for k in keys}
        elif field == "peft_type":
            c[field] = rng.choice(["LORA", "LOHA", "LOKR", "OFT", "IA3", "VERA", "lora", None, 3, "XYZ"])
        else:
            text = json.dumps(c)
            return rng.choice([text[: rng.randrange(len(text))], "[" * 50000 + "]" * 50000, text.replace("8", "9" * 5000, 1), "{}", "null",
                               text.replace("{", '{"r": NaN, ', 1)])
    return json.dumps(c)


# ---- inputs -----------------------------------------------------------------------------------------
class Inputs:
    """Builds mutated copies of the seeds under a scratch folder (one live input at a time)."""

    def __init__(self, seeds: list[Path], scratch: Path, rng: random.Random):
        self.seeds, self.scratch, self.rng = seeds, scratch, rng
        self.cache: dict[Path, tuple[bytes, dict[str, torch.Tensor], dict[str, str]]] = {}
        for s in seeds:
            f = s / "adapter_model.safetensors" if s.is_dir() else s
            raw = f.read_bytes()
            from safetensors import safe_open

            with safe_open(str(f), "pt") as fh:
                md = fh.metadata() or {}
            self.cache[s] = (raw, load_file(str(f)), md)

    def header(self) -> tuple[bytes, int]:
        raw = self.cache[self.rng.choice(self.seeds)][0]
        header, data = _split(raw)
        for _ in range(self.rng.randint(1, 3)):
            header, data = mutate_header(header, data, self.rng)
        return header, len(data)

    def file(self, seed: Path | None = None) -> tuple[Path, Path]:
        """(mutated input path, its seed): a file, or a PEFT folder whose weights and/or config changed."""
        rng = self.rng
        seed = seed or rng.choice(self.seeds)
        raw, tensors, md = self.cache[seed]
        target = self.scratch / "in"
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        mode = rng.randrange(4)
        weights_name = "adapter_model.safetensors"
        if mode == 0:
            blob = raw
            header, data = _split(blob)
            for _ in range(rng.randint(1, 2)):
                header, data = mutate_header(header, data, rng)
            blob = _join(header, data)
        elif mode == 1:
            t = tensors
            for _ in range(rng.randint(1, 2)):
                t = mutate_tensors(t, rng)
            path = self.scratch / "tmp.safetensors"
            try:
                save_file({k: v.contiguous() for k, v in t.items()}, str(path), metadata=md or None)
                blob = path.read_bytes()
            except Exception:
                blob = raw
        elif mode == 2:
            b = bytearray(raw)
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            blob = bytes(b)
        else:
            blob = raw[: rng.randrange(len(raw))] if rng.random() < 0.5 else raw + os.urandom(rng.randint(1, 64))
        if seed.is_dir():
            target.mkdir()
            config = json.loads((seed / "adapter_config.json").read_text())
            text = mutate_config(config, rng) if rng.random() < 0.4 else json.dumps(config)
            (target / "adapter_config.json").write_text(text)
            (target / weights_name).write_bytes(blob)
        else:
            target = self.scratch / "in.safetensors"
            target.write_bytes(blob)
        return target, seed

    def config(self) -> tuple[Path, list[str]]:
        folders = [s for s in self.seeds if s.is_dir()]
        seed = self.rng.choice(folders)
        config = json.loads((seed / "adapter_config.json").read_text())
        path = self.scratch / "adapter_config.json"
        path.write_text(mutate_config(config, self.rng))
        from lolscan.formats.grouping import group_keys

        modules, _ = group_keys(self.cache[seed][1])
        return path, list(modules)


# ---- running ----------------------------------------------------------------------------------------
class Tally:
    def __init__(self, entry: str):
        self.entry, self.counts, self.examples = entry, Counter(), {}
        self.slow = 0
        self.max_s = 0.0
        self.disagree = 0
        self.seconds = 0.0

    def add(self, cls: str, dt: float, detail: str = "") -> None:
        self.counts[cls] += 1
        if dt > SLOW_S:
            self.slow += 1
            self.examples.setdefault("slow", detail or cls)
        self.max_s = max(self.max_s, dt)
        if cls == "uncaught" and len(self.examples) < 20:
            self.examples.setdefault(detail.split(":")[0], detail)

    @property
    def n(self) -> int:
        return sum(self.counts.values())


def classify(fn: Callable[[], Any]) -> tuple[str, float, str, Any]:
    t0 = time.perf_counter()
    try:
        out = fn()
        cls, detail = "ok", ""
    except LolscanError as exc:
        cls, detail, out = "clean", str(exc)[:200], None
    except Exception as exc:  # what the fuzzer is looking for
        cls, detail, out = "uncaught", f"{type(exc).__name__}: {str(exc)[:200]}", None
    return cls, time.perf_counter() - t0, detail, out


def fuzz_header(inputs: Inputs, tally: Tally, n: int, deadline: float) -> None:
    from lolscan.formats.stheader import parse_header

    p = Path("fuzz.safetensors")
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        header, data_len = inputs.header()
        cls, dt, detail, _ = classify(lambda: parse_header(header, data_len, p))
        tally.add(cls, dt, detail)


def fuzz_load(inputs: Inputs, tally: Tally, n: int, deadline: float) -> None:
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        path, _ = inputs.file()
        cls, dt, detail, _ = classify(lambda: lolscan.load(str(path)))
        tally.add(cls, dt, detail)


def fuzz_config(inputs: Inputs, tally: Tally, n: int, deadline: float) -> None:
    from lolscan.formats.peft_config import check_peft_type, module_path, peft_lycoris_scale, peft_scale, read_config

    def run(path: Path, modules: list[str]) -> None:
        config = read_config(path)
        kind = check_peft_type(config, path)
        for m in modules:
            if kind in ("LOHA", "LOKR"):
                peft_lycoris_scale(config, module_path(m))
            else:
                peft_scale(config, module_path(m), 4)

    for _ in range(n):
        if time.monotonic() > deadline:
            break
        path, modules = inputs.config()
        cls, dt, detail, _ = classify(lambda: run(path, modules))
        tally.add(cls, dt, detail)


class FastCheck:
    """The light reader and the full reader on one file, for one seed's layer spec."""

    def __init__(self, seed: Path):
        from lolscan.scan.handoff import packed_floats
        from lolscan.scan.lightread import LightReader
        from lolscan.nets import LayerSpec
        from lolscan.scan.scoring import _Reader

        spec = LayerSpec.from_adapters([lolscan.load(str(seed))])
        self.spec = spec
        rule = {"spec": spec.to_json(), "name": "fuzz", "base_model": "x", "architecture": "glnet", "rank": None}
        self.light = LightReader(rule, [])
        self.full = _Reader(rule, [], False, {}, False)
        self.slot = np.zeros(4 * packed_floats(spec, 16), np.uint8)

    def __call__(self, path: Path) -> tuple[str, bool | None]:
        """(the light reader's row status, or "declined" when it left the file to the full reader;
        whether the full reader agrees, None when declined)."""
        from lolscan.scan.discovery import Found
        from lolscan.scan.packing import slot_views, stack

        got = self.light.read(str(path), self.slot)
        full = self.full(Found(str(path)))
        if str(full.row.get("error") or "").startswith("unexpected "):  # the full reader's last-resort catch
            raise RuntimeError(f"full reader: {full.row['error']}")
        if got is None:
            return "declined:" + full.row["status"], None
        row, written, _ = got
        status = row["status"]
        if status != full.row["status"] or (row["error"] != full.row["error"]):
            return status, False
        if status != "ok":
            return status, True
        if (row["format"], row["layers"], row["rank"]) != (full.row["format"], full.row["layers"], full.row["rank"]):
            return status, False
        cpu = torch.device("cpu")
        a = stack([slot_views(torch.from_numpy(self.slot), self.spec, written)], self.spec, ["a"], cpu)
        b = stack([full.packed], self.spec, ["a"], cpu)
        for ga, gb in zip(a.groups, b.groups):
            if not (torch.equal(ga.ranks, gb.ranks) and torch.equal(ga.U.view(torch.int32), gb.U.view(torch.int32))
                    and torch.equal(ga.V.view(torch.int32), gb.V.view(torch.int32))):
                return status, False
        return status, True


def fuzz_fast(inputs: Inputs, tally: Tally, n: int, deadline: float) -> None:
    checks = {s: FastCheck(s) for s in inputs.seeds}
    tally.decided = tally.declined = 0  # type: ignore[attr-defined]
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        path, seed = inputs.file()
        cls, dt, detail, got = classify(lambda: checks[seed](path))
        status, agree = got if got is not None else ("", None)
        if status.startswith("declined:"):  # the full reader decides, as in a reader process
            tally.declined += 1  # type: ignore[attr-defined]
            status = status.split(":", 1)[1]
        if status in ("error", "nonfinite", "incompatible"):
            cls = "clean"
        if agree is False:
            tally.disagree += 1
            tally.examples.setdefault("disagreement", f"seed {seed.name}")
            shutil.copytree(path, inputs.scratch / f"disagree_{tally.disagree}") if path.is_dir() else shutil.copy(path, inputs.scratch / f"disagree_{tally.disagree}.safetensors")
        if agree is not None:
            tally.decided += 1  # type: ignore[attr-defined]
        tally.add(cls, dt, detail)


def _cli(args: list[str]) -> tuple[int, str, float]:
    """(exit code, stderr, CPU seconds of the child): on a shared machine the child's user+system time
    measures the work an input causes; wall time mostly measures the neighbours."""
    import resource

    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = lambda: (lambda r: r.ru_utime + r.ru_stime - before.ru_utime - before.ru_stime)(resource.getrusage(resource.RUSAGE_CHILDREN))  # noqa: E731
    try:
        res = subprocess.run([sys.executable, "-m", "lolscan", *args], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
        return res.returncode, res.stderr, cpu()
    except subprocess.TimeoutExpired:
        return -9, "timeout", 300.0


def _cli_class(rc: int, stderr: str) -> tuple[str, str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    if rc == 0:
        return "ok", ""
    if rc in (3, 4) and "Traceback" not in stderr and all(line.startswith(("error:", "warning:", "resuming:")) or " scored, " in line for line in lines):
        return "clean", lines[0][:200] if lines else ""
    return "uncaught", f"exit {rc}: {' | '.join(lines[-2:])[:300]}"


def fuzz_cli(inputs: Inputs, tally: Tally, n: int, deadline: float, command: str) -> None:
    if command == "predict":
        seed = inputs.scratch / "example"
        if not seed.exists():
            shutil.copytree(EXAMPLE, seed)
            raw = (seed / "adapter_model.safetensors").read_bytes()
            from safetensors import safe_open

            with safe_open(str(seed / "adapter_model.safetensors"), "pt") as fh:
                md = fh.metadata() or {}
            inputs.cache[seed] = (raw, load_file(str(seed / "adapter_model.safetensors")), md)
        args = ["predict", "--no-progress", "--format", "json"]
    else:
        seed = None
        args = ["inspect", "--json"]
    # the costliest unmutated seed: inspect reads plain LoRA files without torch and the rest with it
    # (about 2 s more CPU), and a mutation can send a plain file down the torch path
    baseline = max(sorted(_cli([*args, str(target)])[2] for _ in range(3))[1] for target in ([seed] if seed is not None else inputs.seeds))
    tally.baseline = baseline  # type: ignore[attr-defined]
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        path, _ = inputs.file(seed)
        rc, stderr, dt = _cli([*args, str(path)])
        cls, detail = _cli_class(rc, stderr)
        tally.add(cls, max(0.0, dt - baseline), detail)


# ---- the CLI in process ------------------------------------------------------------------------------
def cli_inproc(args: list[str]) -> tuple[int, str, str, float, float, str]:
    """``lolscan ARGS`` run in this process as ``python -m lolscan`` runs it (`lolscan.cli.app.main`, with
    sys.argv set), stdout and stderr captured: (exit code, stdout, stderr, wall s, CPU s of this process,
    the traceback of an exception that escaped main, else "")."""
    from lolscan.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["lolscan", *args]
    t0, c0 = time.perf_counter(), time.process_time()
    uncaught = ""
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main()
                rc = 0
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:  # what `python -m lolscan` would show as a traceback
        rc, uncaught = 1, traceback.format_exc()
    finally:
        sys.argv = argv
    return rc, out.getvalue(), err.getvalue(), time.perf_counter() - t0, time.process_time() - c0, uncaught


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_cli_run(command: str, rc: int, stdout: str, stderr: str, uncaught: str, target: Path, json_out: bool) -> str:
    """"" when a run kept the CLI's promises on one input, else what it broke. Promises: an exit code from
    the documented ones (inspect 0/3, predict 0/3/4), no traceback; on failure an ``error:`` line (or, for
    an adapter holding NaN/Inf in predict, its ``warning:`` line) naming the file, at most one ``error:``
    line, and nothing else on stderr but ``warning:`` lines, predict's ``  hint:`` lines and summary;
    --json/--format json: stdout one JSON document whatever the outcome."""
    if uncaught:
        return "exception escaped main: " + uncaught.strip().splitlines()[-1][:200]
    if "Traceback" in stderr or "Traceback" in stdout:
        return "traceback printed: " + stderr.strip().splitlines()[-1][:200]
    codes = (0, 3) if command == "inspect" else (0, 3, 4)
    if rc not in codes:
        return f"exit {rc}: {' | '.join(stderr.strip().splitlines()[-2:])[:200]}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    other = [line for line in lines if not line.startswith(("error:", "warning:", "  hint:")) and " scored, " not in line]
    if other:
        return f"unexpected stderr line: {other[0][:200]}"
    if len(errors) > 1:
        return f"{len(errors)} error lines for one input: {' | '.join(errors)[:300]}"
    if rc:
        named = [line for line in lines if line.startswith(("error:", "warning:")) and str(target) in line]
        if not named:
            return f"exit {rc} without a line naming {target.name}: {' | '.join(lines)[:200]}"
    if json_out:
        try:
            doc = json.loads(stdout, parse_constant=_no_constant)
        except ValueError as exc:
            return f"stdout is not strict JSON (exit {rc}): {str(exc)[:80]}"
        if not isinstance(doc, dict) or "schema_version" not in doc:
            return "JSON report without schema_version"
    return ""


def check_output_file(output: Path) -> str:
    """"" when --output is whole or absent: .json one JSON document with one result, .jsonl lines each a
    whole JSON row ending in a newline; nothing else in its folder but its ``.lock``."""
    left = sorted(p.name for p in output.parent.iterdir() if p.name not in (output.name, output.name + ".lock"))
    if left:
        return f"left beside --output: {left[:3]}"
    if not output.exists():
        return ""
    text = output.read_text(encoding="utf-8", errors="replace")
    try:
        if output.suffix == ".json":
            doc = json.loads(text, parse_constant=_no_constant)
            if len(doc["results"]) != 1:
                return f"{output.name}: {len(doc['results'])} results for one input"
        elif text:
            if not text.endswith("\n"):
                return f"{output.name}: torn last line"
            rows = [json.loads(line, parse_constant=_no_constant) for line in text.splitlines()]
            if len(rows) != 1:
                return f"{output.name}: {len(rows)} rows for one input"
    except (ValueError, KeyError, TypeError) as exc:
        return f"{output.name}: half-written ({type(exc).__name__})"
    return ""


def _predict_seed(inputs: Inputs) -> Path:
    """A copy of the bundled example (the default checkpoint's kind of adapter) among the seeds' cache."""
    seed = inputs.scratch / "example"
    if not seed.exists():
        shutil.copytree(EXAMPLE, seed)
        from safetensors import safe_open

        with safe_open(str(seed / "adapter_model.safetensors"), "pt") as fh:
            md = fh.metadata() or {}
        inputs.cache[seed] = ((seed / "adapter_model.safetensors").read_bytes(), load_file(str(seed / "adapter_model.safetensors")), md)
    return seed


def fuzz_cli_inproc(inputs: Inputs, tally: Tally, n: int, deadline: float, command: str) -> None:
    """`lolscan inspect` (table or --json) / `lolscan predict` (json on stdout, or an --output .json/.jsonl)
    in this process on mutated inputs; each run checked by `check_cli_run` and `check_output_file`, and the
    download cache (LOLSCAN_CACHE_DIR) must stay empty. Slow: over 2 s of this process's CPU time (all its
    threads); the largest wall time is kept too (on a shared machine it mostly measures the neighbours)."""
    rng = inputs.rng
    cache = inputs.scratch / "cache"
    os.environ["LOLSCAN_CACHE_DIR"] = str(cache)
    os.environ["COLUMNS"] = "200"
    outdir = inputs.scratch / "out"
    example = _predict_seed(inputs) if command == "predict" else None
    tally.max_wall = 0.0  # type: ignore[attr-defined]
    cli_inproc([command, "--help"])  # imports, outside the timings
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        seed = example if example is not None and rng.random() < 0.6 else None
        path, _ = inputs.file(seed)
        if rng.random() < 0.1:  # a file name with markup, spaces and non-ASCII
            odd = path.with_name("in [bold] [x] é" + path.suffix)
            path = path.rename(odd)
        output = None
        if command == "inspect":
            json_out = rng.random() < 0.5
            args = ["inspect", str(path)] + (["--json"] if json_out else ["--modules", "0"])
        else:
            json_out = True
            args = ["predict", str(path), "--no-progress", "--procs", "0", "--format", "json"]
            choice = rng.randrange(3)
            if choice:
                shutil.rmtree(outdir, ignore_errors=True)
                outdir.mkdir()
                output = outdir / ("results.jsonl" if choice == 1 else "results.json")
                args += ["--output", str(output)]
                if choice == 1:
                    json_out = False
                    args[args.index("json")] = "jsonl"
        rc, out, err, wall, cpu, uncaught = cli_inproc(args)
        problem = check_cli_run(command, rc, out, err, uncaught, path, json_out)
        if not problem and output is not None:
            problem = check_output_file(output)
        if not problem and cache.exists() and any(cache.iterdir()):
            problem = f"download cache touched: {sorted(p.name for p in cache.iterdir())[:3]}"
        cls = "uncaught" if problem else ("ok" if rc == 0 else "clean")
        if problem:
            keep = inputs.scratch / f"failed_{tally.counts['uncaught'] + 1}{path.suffix}"
            shutil.copytree(path, keep) if path.is_dir() else shutil.copy(path, keep)
            problem = f"{problem} (input kept as {keep.name}; {' '.join(args[:1] + args[2:])})"
        tally.max_wall = max(tally.max_wall, wall)  # type: ignore[attr-defined]
        tally.add(cls, cpu, problem)
        if path.name.startswith("in ["):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def table(tallies: list[Tally]) -> str:
    lines = ["| entry point | inputs | ok | clean lolscan error | uncaught exception | slow (> 2 s) | slowest (s) | fast ≠ full | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in tallies:
        extra = ""
        if t.entry == "fast":
            extra = f"{t.disagree} of {getattr(t, 'decided', 0):,} ({getattr(t, 'declined', 0):,} left to the full reader)"
        else:
            extra = "–"
        slow_label = f"{t.max_s:.2f}" + (f" CPU s above a {t.baseline:.1f} s run" if hasattr(t, "baseline") else "")
        if hasattr(t, "max_wall"):
            slow_label += f" CPU s (wall {t.max_wall:.2f} s)"
        lines.append(f"| {t.entry} | {t.n:,} | {t.counts['ok']:,} | {t.counts['clean']:,} | {t.counts['uncaught']:,} | {t.slow:,} | "
                     f"{slow_label} | {extra} | {t.seconds:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[Tally]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", default="header,config,load,fast", help=f"comma-separated, from {','.join(ENTRIES)}")
    ap.add_argument("--n", type=int, default=1000, help="inputs per entry point (at most)")
    ap.add_argument("--seconds", type=float, default=60.0, help="time limit per entry point")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scratch", type=Path, default=None, help="where inputs are written (default: a temporary folder, /dev/shm if present)")
    ap.add_argument("--json", type=Path, default=None, help="also write the tallies here")
    ap.add_argument("--fixtures", type=Path, default=REAL, help="the real fixtures folder (default: ../shared/fixtures/real)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="lolscan-fuzz-", dir=base))
    scratch.mkdir(parents=True, exist_ok=True)
    seeds = make_seeds(scratch / "seeds", rng, args.fixtures)
    inputs = Inputs(seeds, scratch, rng)
    tallies = []
    for entry in args.entries.split(","):
        tally = Tally(entry)
        t0 = time.monotonic()
        deadline = t0 + args.seconds
        if entry == "header":
            fuzz_header(inputs, tally, args.n, deadline)
        elif entry == "load":
            fuzz_load(inputs, tally, args.n, deadline)
        elif entry == "config":
            fuzz_config(inputs, tally, args.n, deadline)
        elif entry == "fast":
            fuzz_fast(inputs, tally, args.n, deadline)
        elif entry in ("inspect-inproc", "predict-inproc"):
            fuzz_cli_inproc(inputs, tally, args.n, deadline, entry.split("-")[0])
        elif entry in ("inspect", "predict"):
            fuzz_cli(inputs, tally, args.n, deadline, entry)
        else:
            ap.error(f"unknown entry point {entry!r}")
        tally.seconds = time.monotonic() - t0
        tallies.append(tally)
        print(f"{entry}: {tally.n} inputs, {dict(tally.counts)}, slow {tally.slow}, disagreements {tally.disagree}", file=sys.stderr, flush=True)
        for k, v in tally.examples.items():
            print(f"  {k}: {v}", file=sys.stderr)
    print(table(tallies))
    if args.json:
        args.json.write_text(json.dumps([{"entry": t.entry, "inputs": t.n, **t.counts, "slow": t.slow, "max_s": t.max_s, "max_wall": getattr(t, "max_wall", None), "disagree": t.disagree,
                                          "decided": getattr(t, "decided", None), "declined": getattr(t, "declined", None), "seconds": t.seconds, "examples": t.examples} for t in tallies], indent=1))
    if args.scratch is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return tallies


if __name__ == "__main__":
    main()
