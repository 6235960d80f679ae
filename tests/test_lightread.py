"""The torch-free reader of reader processes (lolscan.scan.lightread, lolscan.scan.npconvert): the same slot
bytes as ``pack(lolscan.load(path))``, the same error rows for hostile files, the full reader for
everything else, and no torch in the reader processes."""
from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import lolscan
from lolscan.scan.discovery import Found
from lolscan.scan.handoff import packed_floats
from lolscan.scan.lightread import LightReader, init_worker, read_in_process
from lolscan.nets import LayerShape, LayerSpec
from lolscan.scan.npconvert import Converter, bf16_to_f32, f16_to_f32
from lolscan.scan.packing import pack, slot_views, stack
from lolscan.scan.scoring import _Reader

from helpers import REAL, REPO


# ---- conversions --------------------------------------------------------------------------------
def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32)


def test_f16_and_bf16_conversions_are_torchs_for_every_bit_pattern():
    every = np.arange(65536, dtype=np.uint16)
    h = np.concatenate([every, np.random.default_rng(0).permutation(every)])  # long: torch's vectorised path
    want = torch.from_numpy(h.view(np.float16).copy()).float().numpy()
    got = np.empty(h.size, np.float32)
    f16_to_f32(h, got)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(_bits(got)[~nan], _bits(want)[~nan])  # zeros, subnormals, normals, ±inf
    assert np.array_equal(_bits(got)[nan], _bits(want)[nan])  # NaNs quieted as torch quiets them
    want = torch.from_numpy(h.copy()).view(torch.bfloat16).float().numpy()
    bf16_to_f32(h, got)
    assert np.array_equal(_bits(got), _bits(want))


def test_converter_runs_gaps_alignment_and_float64():
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal(7).astype("<f2"), np.zeros(3, "<u1"), rng.standard_normal(5).astype("<f2"),
             rng.standard_normal(4).astype("<f8") * 1e-300, rng.standard_normal(6).astype("<f4")]
    blob, entries, at = bytearray(), [], 0
    for p, name in zip(parts, ["F16", "U8", "F16", "F64", "F32"]):
        raw = p.tobytes()
        entries.append((name, p.shape, at, at + len(raw)))
        blob += raw
        at += len(raw)
    wanted = [e for e in entries if e[0] != "U8"]  # the second F16 tensor starts at an odd offset
    got = Converter().float32(memoryview(blob), wanted)
    for p, e in zip([parts[0], parts[2], parts[3], parts[4]], wanted):
        want = torch.from_numpy(p.copy()).float().numpy()
        assert np.array_equal(_bits(got[e[2], e[3]]), _bits(want)), e


# ---- slots: the light reader against lolscan.load + pack ---------------------------------------
def _rule(spec: LayerSpec, rank: int | None = None) -> dict:
    return {"spec": spec.to_json(), "name": "t", "base_model": "x", "architecture": "glnet", "rank": rank}


def _spec_with_extra(adapter) -> LayerSpec:
    """The adapter's own modules, plus a module it does not touch (zero padded, rank 0) in its first group."""
    spec = LayerSpec.from_adapters([adapter])
    first = spec[0]
    return LayerSpec([*spec, LayerShape("never.touched", first.n, first.m)])


def _same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Bit for bit; NaNs only where the other has NaNs (their payloads differ even between torch's own kernels)."""
    nan = torch.isnan(b)
    assert torch.equal(torch.isnan(a), nan), what
    assert torch.equal(a[~nan].view(torch.int32), b[~nan].view(torch.int32)), what


def _compare(path: Path, spec: LayerSpec | None = None, reader: LightReader | None = None) -> tuple[dict, list[str]]:
    """Read ``path`` with the light reader into a garbage-filled slot and assemble a batch from it, next
    to a zoo-like adapter: the batch must hold the bytes of one assembled from ``pack(lolscan.load(path))``."""
    adapter = lolscan.load(str(path))
    spec = spec or _spec_with_extra(adapter)
    slot = np.full(4 * packed_floats(spec, 16), 0x7F, np.uint8)
    got = (reader or LightReader(_rule(spec), ["score"])).read(str(path), slot)
    assert got is not None, f"{path.name}: the light reader declined"
    row, written, _ = got
    assert written.ranks == [k.tolist() for _, _, k in pack(adapter, spec)]
    other = pack(_neighbour(spec), spec)
    cpu = torch.device("cpu")
    light = stack([slot_views(torch.from_numpy(slot), spec, written), other], spec, ["a", "b"], cpu)
    full = stack([pack(adapter, spec), other], spec, ["a", "b"], cpu)
    for i, (ga, gb) in enumerate(zip(light.groups, full.groups)):
        _same(ga.U, gb.U, f"{path.name} group {i} U")
        _same(ga.V, gb.V, f"{path.name} group {i} V")
        assert torch.equal(ga.ranks, gb.ranks)
    assert row["format"] == adapter.format and row["layers"] == len(adapter) and row["rank"] == sorted(set(adapter.ranks))
    return row, written.dtypes


def _neighbour(spec: LayerSpec):
    """An adapter of rank 6 on every module of ``spec``, batched beside the one under test (padding)."""
    from lolscan.adapter import Adapter, Layer

    g = torch.Generator().manual_seed(9)
    layers = {s.name: Layer(U=torch.randn(s.n, 6, generator=g), V=torch.randn(s.m, 6, generator=g), shape=(s.n, s.m)) for s in spec}
    return Adapter(layers=layers, format="test")


def _kohya(path: Path, dtype: torch.dtype, *, alpha: float | None, ranks=(4, 4, 2), conv: bool = False, nan: bool = False) -> Path:
    g = torch.Generator().manual_seed(len(path.name))
    t = {}
    mods = [("lora_unet_down_blocks_0_attentions_0_proj_in", 32, 24), ("lora_unet_mid_block_attentions_0_proj_out", 32, 24),
            ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 16, 16)]
    for (key, n, m), r in zip(mods, ranks):
        t[f"{key}.lora_down.weight"] = torch.randn(r, m, generator=g).to(dtype)
        t[f"{key}.lora_up.weight"] = torch.randn(n, r, generator=g).to(dtype)
        if alpha is not None:
            t[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float16 if dtype == torch.bfloat16 else dtype)
    if conv:
        t["lora_unet_conv_in.lora_down.weight"] = torch.randn(3, 4, 3, 3, generator=g).to(dtype)
        t["lora_unet_conv_in.lora_up.weight"] = torch.randn(8, 3, 1, 1, generator=g).to(dtype)
    if nan:
        up = t[f"{mods[0][0]}.lora_up.weight"]
        up.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0], dtype=dtype)
        if dtype == torch.float16:
            up.view(torch.int16).view(-1)[4] = 0x7C01  # a signalling NaN
    save_file(t, str(path), metadata={"ss_network_module": "networks.lora"})
    return path


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [None, 2.0, -3.0, 0.0])
def test_kohya_files_every_dtype_and_alpha(tmp_path, dtype, alpha):
    """16-bit groups keep the file's bits (scaled while the batch is assembled) unless a scale is
    negative; the others are converted and scaled by the reader."""
    _, dtypes = _compare(_kohya(tmp_path / "k.safetensors", dtype, alpha=alpha, conv=True))
    raw = {torch.float16: "F16", torch.bfloat16: "BF16"}.get(dtype)
    if raw is None:
        assert set(dtypes) == {"F32"}
    elif alpha is None or alpha >= 0:
        assert set(dtypes) == {raw}  # every group (the spec's extra module shares the first group)
    else:
        assert dtypes == ["F32", raw, "F32"]  # the conv module has no alpha: scale 1


def test_non_finite_values_give_the_same_nonfinite_row_in_both_readers(tmp_path):
    """NaN/Inf in a module's factors (or its alpha) is never scored: status ``nonfinite`` naming the
    module, from the light reader and the full reader alike; NaN in a tensor that is no factor is not."""
    def rows(path: Path) -> tuple[dict, dict]:
        spec = _spec_with_extra(lolscan.load(str(path)))
        got = LightReader(_rule(spec), []).read(str(path), np.zeros(4 * packed_floats(spec, 16), np.uint8))
        assert got is not None, path.name
        full = _Reader(_rule(spec), [], False, {}, False)(Found(str(path)))
        return got[0], full.row, got[1], full.packed

    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        light, full, written, packed = rows(_kohya(tmp_path / f"nan_{str(dtype)[6:]}.safetensors", dtype, alpha=3.0, ranks=(5, 2, 7), nan=True))
        assert written is None and packed is None
        assert light["status"] == full["status"] == "nonfinite", (dtype, light, full)
        assert light["error"] == full["error"] and "1 module(s)" in light["error"]
        assert "unet.down_blocks.0.attentions.0.proj_in" in light["error"]
    path = _kohya(tmp_path / "nan_alpha.safetensors", torch.float32, alpha=float("nan"))
    light, full, _, _ = rows(path)
    assert light["status"] == full["status"] == "nonfinite" and light["error"] == full["error"] and "3 module(s)" in light["error"]
    from safetensors.torch import load_file
    t = load_file(str(_kohya(tmp_path / "extra.safetensors", torch.float16, alpha=2.0)))
    t["lora_te_text_model_embeddings.position_ids"] = torch.tensor([float("nan"), float("inf")])  # not a factor
    save_file(t, str(tmp_path / "extra.safetensors"))
    light, full, written, packed = rows(tmp_path / "extra.safetensors")
    assert light["status"] == full["status"] == "ok" and written is not None and packed is not None


@pytest.mark.parametrize("dtype, value, alpha", [(torch.float32, 3e38, 8.0), (torch.bfloat16, 3e38, 8.0), (torch.float64, 1e300, None),
                                                 (torch.float32, 3e38, None)])
def test_values_that_overflow_float32_once_scaled_are_nonfinite_in_both_readers(tmp_path, dtype, value, alpha):
    """Finite in the file, not once converted to float32 and scaled (alpha 8 on rank 2: ×2): the full reader
    finds NaN/Inf in the factors; the light reader must say so too (not score an Inf). Scale 1 and float32: ok."""
    t = {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.randn(2, 8).to(dtype),
         "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.randn(6, 2).to(dtype)}
    t["lora_unet_mid_block_attentions_0_proj_in.lora_up.weight"].view(-1)[3] = value
    if alpha is not None:
        t["lora_unet_mid_block_attentions_0_proj_in.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    path = tmp_path / "big.safetensors"
    save_file(t, str(path))
    spec = _spec_with_extra(lolscan.load(str(path)))
    got = LightReader(_rule(spec), []).read(str(path), np.zeros(4 * packed_floats(spec, 16), np.uint8))
    full = _Reader(_rule(spec), [], False, {}, False)(Found(str(path)))
    assert got is not None
    want = "ok" if (dtype == torch.float32 and alpha is None) else "nonfinite"
    assert got[0]["status"] == full.row["status"] == want and got[0]["error"] == full.row["error"]


def test_mixed_ranks_and_a_rank_rule(tmp_path):
    _compare(_kohya(tmp_path / "mixed.safetensors", torch.float16, alpha=3.0, ranks=(5, 2, 7)))
    path = _kohya(tmp_path / "r.safetensors", torch.float16, alpha=None, ranks=(4, 2, 4))
    spec = LayerSpec.from_adapters([lolscan.load(str(path))])
    # a fixed-rank checkpoint (mlp, mlp-oalign) reads ranks up to its own, zero-padded: rank 4 reads it, rank 3 does not
    _compare(path, spec, LightReader(_rule(spec, rank=4), ["score"]))
    assert LightReader(_rule(spec, rank=3), []).read(str(path), np.zeros(4 * packed_floats(spec, 8), np.uint8)) is None


def test_peft_and_diffusers_files_and_folders(tmp_path):
    g = torch.Generator().manual_seed(3)
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.mlp.up_proj"]
    shapes = [(16, 16), (8, 16), (24, 16)]
    folder = tmp_path / "peft"
    folder.mkdir()
    t = {}
    for name, (n, m), r in zip(names, shapes, (4, 4, 2)):
        t[f"base_model.model.{name}.lora_A.weight"] = torch.randn(r, m, generator=g).half()
        t[f"base_model.model.{name}.lora_B.weight"] = torch.randn(n, r, generator=g).half()
    save_file(t, str(folder / "adapter_model.safetensors"), metadata={"lolscan_labels": json.dumps({"score": 1.5})})
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": True,
                                                            "rank_pattern": {"up_proj": 2}, "alpha_pattern": {"v_proj": 3}}))
    _compare(folder)
    _compare(folder / "adapter_model.safetensors")  # a weights file beside its config
    row, _, labels = LightReader(_rule(LayerSpec.from_adapters([lolscan.load(str(folder))])), ["score"]).read(
        str(folder), np.zeros(40_000, np.uint8))
    assert row["format"] == "peft" and labels == {"score": 1.5}

    t = {}
    for name, (n, m), r in zip(["unet.down_blocks.0.attentions.0.proj_in", "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"],
                               [(16, 16), (8, 16)], (4, 2)):
        t[f"{name}.lora_A.weight"] = torch.randn(r, m, generator=g).float()
        t[f"{name}.lora_B.weight"] = torch.randn(n, r, generator=g).float()
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 2, "text_encoder.r": 2, "text_encoder.lora_alpha": 6})}
    save_file(t, str(tmp_path / "diffusers.safetensors"), metadata=meta)
    assert _compare(tmp_path / "diffusers.safetensors")[0]["format"] == "diffusers"


def test_real_fixtures(tmp_path):
    assert _compare(REAL / "catundchat_sd15_pytorch_lora_weights.safetensors")[0]["format"] == "diffusers"
    assert _compare(REAL / "gradience_tiny_lora")[0]["format"] == "peft"
    for name in ("cloneofsimo_analog_svd_rank4.safetensors", "cloneofsimo_lora_disney.safetensors"):
        adapter = lolscan.load(str(REAL / name))
        spec = LayerSpec.from_adapters([adapter])
        assert LightReader(_rule(spec), []).read(str(REAL / name), np.zeros(4 * packed_floats(spec, 4), np.uint8)) is None


def test_unaligned_float16_tensors(tmp_path):
    """safetensors writers align tensors, a hostile or odd writer need not: the bytes are read in place."""
    rng = np.random.default_rng(2)
    down, up = rng.standard_normal((2, 6)).astype("<f2"), rng.standard_normal((5, 2)).astype("<f2")
    header = {"pad": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
              "x.lora_A.weight": {"dtype": "F16", "shape": [2, 6], "data_offsets": [1, 25]},
              "x.lora_B.weight": {"dtype": "F16", "shape": [5, 2], "data_offsets": [25, 45]}}
    blob = json.dumps(header).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" + down.tobytes() + up.tobytes())
    _compare(path)


# ---- what the light reader does not decide -----------------------------------------------------
def _same_header(path: Path, seed: int, alpha: float, network: str = "networks.lora") -> Path:
    """kohya files whose headers are byte for byte equal for equal ``network``: other factors and alphas."""
    g = torch.Generator().manual_seed(seed)
    t = {}
    for key, n, m, r in (("lora_unet_down_blocks_0_attentions_0_proj_in", 32, 24, 4), ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 16, 16, 2)):
        t[f"{key}.lora_down.weight"] = torch.randn(r, m, generator=g).half()
        t[f"{key}.lora_up.weight"] = torch.randn(n, r, generator=g).half()
        t[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    save_file(t, str(path), metadata={"ss_network_module": network})
    return path


def _header_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[: 8 + int.from_bytes(raw[:8], "little")]


def test_header_cache_reuses_byte_identical_headers_only(tmp_path, monkeypatch):
    """A repeated header is parsed once per reader; the factors, alphas and rows stay each file's own
    (bit for bit those of lolscan.load); another header, or the same header over a data region of
    another length, is parsed and validated afresh."""
    import lolscan.scan.lightread as lightread

    a = _same_header(tmp_path / "a.safetensors", 1, 2.0)
    b = _same_header(tmp_path / "b.safetensors", 2, -3.0)  # negative alpha: the reader converts and scales
    c = _same_header(tmp_path / "c.safetensors", 3, 8.0, network="networks.lora_fa")  # one header byte apart
    assert _header_bytes(a) == _header_bytes(b) != _header_bytes(c)
    calls: list[bytes] = []
    real = lightread.parse_header
    monkeypatch.setattr(lightread, "parse_header", lambda raw, *rest: calls.append(raw) or real(raw, *rest))
    spec = _spec_with_extra(lolscan.load(str(a)))
    reader = LightReader(_rule(spec), ["score"])
    for path in (a, b, a, b):
        _compare(path, spec, reader)
    assert len(calls) == 1
    _compare(c, spec, reader)
    assert len(calls) == 2
    short = tmp_path / "short.safetensors"  # a's header over a cut data region: the offsets check fails
    short.write_bytes(a.read_bytes()[:-6])
    slot = np.zeros(4 * packed_floats(spec, 16), np.uint8)
    row, written, _ = reader.read(str(short), slot)
    assert row["status"] == "error" and written is None and "outside the file" in row["error"]
    assert len(calls) == 3
    _compare(b, spec, reader)
    assert len(calls) == 3


def test_header_cache_is_bounded(tmp_path, monkeypatch):
    import lolscan.scan.lightread as lightread

    monkeypatch.setattr(lightread, "PLAN_CACHE_ENTRIES", 2)
    files = [_same_header(tmp_path / f"{i}.safetensors", i, 1.0, network=f"networks.lora{i}") for i in range(4)]
    spec = _spec_with_extra(lolscan.load(str(files[0])))
    reader = LightReader(_rule(spec), [])
    for path in files:
        _compare(path, spec, reader)
    assert [key[0] for key in reader._plans] == [_header_bytes(f)[8:] for f in files[2:]]
    assert reader._plan_bytes == sum(len(key[0]) for key in reader._plans)
    assert pickle.loads(pickle.dumps(reader))._plans == {}  # a reader process starts with its own cache


def _hostile(tmp_path: Path) -> dict:
    from test_hostile_input import _cases

    return _cases(tmp_path)


def test_hostile_files_give_the_rows_of_the_full_reader(tmp_path):
    spec = LayerSpec([LayerShape("lora_unet_a", 3, 4)])
    rule = _rule(spec)
    light = LightReader(rule, [])
    full = _Reader(rule, [], False, {}, True)
    init_worker(light, pickle.dumps(full), None)
    slot = np.zeros(4 * packed_floats(spec, 8), np.uint8)
    decided = 0
    for label, (path, _) in _hostile(tmp_path).items():
        want = full(Found(str(path))).row
        got = light.read(str(path), slot)
        if got is not None:  # header problems: decided here, with lolscan.load's message
            decided += 1
            assert got[0] == want and got[1] is None, label
        kind, item = read_in_process(str(path), None)  # no slot: always the full reader
        assert kind == "full" and item.row == want and want["status"] == "error", label
    assert decided >= 7  # truncated, short, header length, JSON, oversized, dtype, size


def test_reader_processes_do_not_import_torch(tmp_path):
    """Readers started by a fork server import lightread, not torch, when every file is plain."""
    path = _kohya(tmp_path / "plain.safetensors", torch.float16, alpha=2.0)
    spec = LayerSpec.from_adapters([lolscan.load(str(path))])
    (tmp_path / "rule.json").write_text(json.dumps(_rule(spec)))
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(f"""
        import json, multiprocessing, os
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import shared_memory

        def main():
            from lolscan.scan.lightread import ArenaInfo, LightReader, init_worker, read_in_process
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["lolscan.scan.lightread"])
            light = LightReader(json.load(open({str(tmp_path / "rule.json")!r})), [])
            shm = shared_memory.SharedMemory(create=True, size=4 * 100_000)
            try:
                info = ArenaInfo(shm.name, 1, 100_000)
                with ProcessPoolExecutor(1, mp_context=ctx, initializer=init_worker, initargs=(light, b"", info)) as pool:
                    kind, got = pool.submit(read_in_process, {str(path)!r}, 0).result()
                    pid = pool.submit(os.getpid).result()
                    maps = open(f"/proc/{{pid}}/maps").read()
                print(kind, got[0]["status"], "libtorch" in maps, "numpy" in maps)
            finally:
                shm.close()
                shm.unlink()

        if __name__ == "__main__":
            main()
    """))
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["light", "ok", "False", "True"], done.stdout


def test_importing_lolscan_and_the_light_reader_does_not_import_torch():
    code = "import sys, lolscan, lolscan.scan.lightread; assert 'torch' not in sys.modules, 'torch imported'; print(lolscan.Adapter.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(REPO)}, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "Adapter", done.stderr[-2000:]


def test_widening_and_scaling_paths_agree_with_lolscan_load_arithmetic():
    """`packing` widens 16-bit factors and multiplies them by √s in float32, on the device in one op
    (`_scaled`) or on the CPU through a contiguous buffer (`_widen`): both are ``x.float().mul_(√s)``,
    the operation `formats.plain` applies to the file's factors."""
    from lolscan.scan.packing import _scaled, _widen

    g = torch.Generator().manual_seed(4)
    for dtype in (torch.float16, torch.bfloat16):
        src = (torch.randn(3, 40, 5, generator=g) * 300).to(dtype)
        src.view(-1)[:3] = torch.tensor([float("inf"), -0.0, 1e-7]).to(dtype)
        for c in (1.0, 0.75, 2.0 ** 0.5, 0.0, 1e-3):
            want = src.float().mul_(c)  # one scale per layer here: all three layers share c
            scale = torch.full((3,), c, dtype=torch.float32)
            dst = torch.full((3, 40, 2, 8), float("nan"))[:, :, 1, :5]
            _scaled(src, scale, dst)
            assert torch.equal(dst.contiguous().view(torch.int32), want.view(torch.int32)), (dtype, c)
            assert torch.equal(_widen(src, scale, None).view(torch.int32), want.view(torch.int32)), (dtype, c)
        assert torch.equal(_widen(src, None, torch.empty(3, 40, 5)).view(torch.int32), src.float().view(torch.int32))


def test_kohya_underscores_over_diffusers_processor_names(tmp_path):
    """``lora_unet_unet_…_to_out_lora_down.weight``: the light reader names (``to_out.0``) and packs as lolscan.load does."""
    g = torch.Generator().manual_seed(11)
    t = {}
    for key, (n, m) in {"down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out": (32, 32),
                        "mid_block_attentions_0_transformer_blocks_0_attn2_to_v": (64, 24)}.items():
        t[f"lora_unet_unet_{key}_lora_down.weight"] = torch.randn(4, m, generator=g).half()
        t[f"lora_unet_unet_{key}_lora_up.weight"] = torch.randn(n, 4, generator=g).half()
        t[f"lora_unet_unet_{key}.alpha"] = torch.tensor(2.0).half()
    save_file(t, str(tmp_path / "u.safetensors"))
    row, _ = _compare(tmp_path / "u.safetensors")
    assert row["layers"] == 2 and "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0" in lolscan.load(str(tmp_path / "u.safetensors"))


def test_empty_adapter_config_means_peft_defaults_in_both_readers(tmp_path):
    """An adapter_config.json of ``{}`` is a config (peft's defaults: lora_alpha 8), not the absence of
    one: alpha tensors in the weights are not read, by either reader (found by bench/fuzz.py)."""
    folder = tmp_path / "peft"
    folder.mkdir()
    g = torch.Generator().manual_seed(4)
    t = {"base_model.model.h.0.attn.c_proj.lora_A.weight": torch.randn(4, 16, generator=g),
         "base_model.model.h.0.attn.c_proj.lora_B.weight": torch.randn(16, 4, generator=g),
         "base_model.model.h.0.attn.c_proj.alpha": torch.tensor(-4.0)}
    save_file(t, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text("{}")
    _compare(folder)
    assert lolscan.load(str(folder))["h.0.attn.c_proj"].scale == 2.0  # 8 / 4
