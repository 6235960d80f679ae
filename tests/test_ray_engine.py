"""`lolscan predict --engine ray` (issue 21): on a local Ray instance, a few hundred synthetic adapters
(with an unreadable file, an adapter of another base model, one of mixed ranks in float16 and one
of rank 20, too big for a slot) give the rows of
the local scan; a read worker and a scoring actor killed mid-run lose no row and duplicate none;
resume after an interrupted run skips the sources already in the shards; without Ray the command
fails in one line."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")  # the `test` extra installs it: CI runs these
pytest.importorskip("ray.data")

import lolscan  # noqa: E402
from lolscan.scan.ray_engine import RayOptions, read_shard, shards  # noqa: E402
from lolscan.scan.run import PredictHooks, PredictOptions, predict  # noqa: E402

from helpers import REAL, REPO, run_cli_modules, train_tiny_checkpoint  # noqa: E402

N_ZOO = 200


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """(checkpoint path, library folder, the local scan's rows by source)."""
    import torch
    from safetensors.torch import save_file

    from lolscan.training import write_synthetic_zoo

    root = tmp_path_factory.mktemp("ray")
    _, _, _, ckpt = train_tiny_checkpoint(root, seed=11, name="ray", out=root / "ckpt")
    lib = root / "lib"
    write_synthetic_zoo(lib, n=N_ZOO, seed=5)
    (lib / "manifest.csv").unlink()
    (lib / "a_broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    shutil.copy(REAL / "cloneofsimo_lora_disney.safetensors", lib / "b_other_base.safetensors")
    base = lolscan.load(str(lib / "lora_0000"))  # mixed ranks, float16: the light reader's scaled path
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for j, name in enumerate(base.layers):
        layer, r = base[name], 1 + j
        tensors[f"base_model.model.{name}.lora_A.weight"] = (torch.randn(r, layer.m, generator=g) / 4).half()
        tensors[f"base_model.model.{name}.lora_B.weight"] = (torch.randn(layer.n, r, generator=g) / 4).half()
    save_file(tensors, str(lib / "c_mixed.safetensors"))
    wide = {}  # rank 20: too big for a slot, sent as arrays
    for name in base.layers:
        layer = base[name]
        wide[f"base_model.model.{name}.lora_A.weight"] = torch.randn(20, layer.m, generator=g) / 8
        wide[f"base_model.model.{name}.lora_B.weight"] = torch.randn(layer.n, 20, generator=g) / 8
    save_file(wide, str(lib / "d_rank20.safetensors"))
    local = predict(_opts(ckpt, lib, procs="0"))
    rows = {r["source"]: r for r in local.rows}
    assert len(rows) == N_ZOO + 4 and rows[str(lib / 'd_rank20.safetensors')]['rank'] == [20] and {r["status"] for r in rows.values()} == {"ok", "error", "incompatible"}
    return ckpt, lib, rows


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    """One small local Ray instance for the module; its workers import this checkout (and this folder,
    for the fault-injection hooks below)."""
    path = os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def _opts(ckpt: Path, lib: Path, **kw) -> PredictOptions:
    return PredictOptions(targets=[str(lib)], model=str(ckpt), source_options={}, **kw)


def _ray(ckpt: Path, lib: Path, output: Path | None, fmt: str = "jsonl", resume: bool = False, **ray_kw) -> PredictOptions:
    return _opts(ckpt, lib, engine="ray", output=output, out_fmt=fmt if output else None, resume=resume, batch_size=16,
                 ray=RayOptions(shard_rows=ray_kw.pop("shard_rows", 64), **ray_kw))


def _close(a, b, path="row"):
    """Equal, floats to 1e-5 (a batch of other adapters may round the last bits differently)."""
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), f"{path}: {a} != {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{path}: {sorted(a)} != {sorted(b)}"
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _shard_rows(folder: Path, fmt: str) -> list[dict]:
    return [r for p in shards(folder, fmt) for r in read_shard(p)]


def _same_as_local(rows: list[dict], local: dict[str, dict]) -> None:
    """Every source once, and each row the local scan's (schema_version: the shards carry it)."""
    sources = [r["source"] for r in rows]
    assert len(sources) == len(set(sources)), "a source is in the output twice"
    assert set(sources) == set(local), "rows lost or added"
    for r in rows:
        _close({k: v for k, v in r.items() if k != "schema_version"}, local[r["source"]], r["source"])


def _kill_once(marker_dir: str, tag: str, victim: str):
    """A hook that kills its own worker process (os._exit) the first time it sees ``victim``."""

    def hook(sources: list[str]) -> None:
        marker = Path(marker_dir) / f"killed-{tag}"
        if victim in sources and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)

    return hook


def test_a_killed_read_worker_and_scoring_actor_lose_no_row_and_duplicate_none(lib, tmp_path):
    ckpt, folder, local = lib
    sources = list(local)
    out = tmp_path / "rows.parquet"
    opts = _ray(ckpt, folder, out, "parquet", before_read=_kill_once(str(tmp_path), "read", sources[40]),
                before_score=_kill_once(str(tmp_path), "score", sources[150]))
    result = predict(opts)
    assert (tmp_path / "killed-read").exists() and (tmp_path / "killed-score").exists()  # both workers did die
    assert [r["source"] for r in result.rows] == list(local)  # in the local scan's order
    _same_as_local(result.rows, local)
    _same_as_local(_shard_rows(out, "parquet"), local)
    import pyarrow.parquet as pq

    schema = pq.read_schema(shards(out, "parquet")[0])
    assert str(schema.field("status").type) == "string" and str(schema.field("rank").type) == "list<element: int64>"


class _Stop(Exception):
    pass


def test_resume_after_an_interrupted_run_skips_what_the_shards_hold(lib, tmp_path):
    ckpt, folder, local = lib
    out = tmp_path / "rows.jsonl"
    seen = 0

    def progress(total):
        from contextlib import nullcontext

        def advance():
            nonlocal seen
            seen += 1
            if seen == 100:
                raise _Stop  # the run dies after 100 rows (the driver killed, say)

        return nullcontext(advance)

    with pytest.raises(_Stop):
        predict(_ray(ckpt, folder, out, shard_rows=30), PredictHooks(progress=progress))
    first = _shard_rows(out, "jsonl")
    assert len(first) == 100  # 3 whole shards of 30 and the 10 rows left, written whole on the way out

    torn = out / ".part-x-00009.jsonl.k2j4.tmp"  # what a driver killed while writing a shard leaves
    torn.write_text('{"source": "half')
    log = tmp_path / "reads.log"
    resumed: list[tuple[int, int]] = []
    opts = _ray(ckpt, folder, out, resume=True, before_read=_log_reads(str(log)))
    result = predict(opts, PredictHooks(resumed=lambda d, f: resumed.append((d, f))))
    done_ok = {r["source"] for r in first if r["status"] == "ok"}
    assert resumed == [(len(done_ok), len(local))]
    read_again = set(log.read_text().split("\n")) - {""}
    assert read_again == set(local) - done_ok  # exactly the sources not scored yet, failures included
    _same_as_local(result.rows, local)
    _same_as_local(_shard_rows(out, "jsonl"), local)  # failed rows dropped from their shard, scored again
    assert not torn.exists()


def _log_reads(path: str):
    def hook(sources: list[str]) -> None:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("".join(s + "\n" for s in sources))

    return hook


def test_cli_engine_ray_gives_the_rows_and_exit_code_of_the_local_scan_in_jsonl_shards(lib, tmp_path):
    from typer.testing import CliRunner

    from lolscan.cli.app import _register, app

    _register()
    ckpt, folder, local = lib
    out = tmp_path / "scan.jsonl"
    res = CliRunner().invoke(app, ["predict", str(folder), "--model", str(ckpt), "--engine", "ray", "-o", str(out),
                                   "-f", "jsonl", "--no-progress"])
    assert res.exit_code == 4, res.output  # an adapter of another base model: 4, as the local scan
    _same_as_local([json.loads(x) for x in res.stdout.splitlines()], local)
    assert len(shards(out, "jsonl")) == 1  # the default shard is 4096 rows
    _same_as_local(_shard_rows(out, "jsonl"), local)
    assert [p.name for p in out.iterdir() if not p.name.startswith("part-")] == []  # no temporary file left
    # an existing file where the shard folder should go: refused, nothing written
    (tmp_path / "file.jsonl").write_text("{}\n")
    res = CliRunner().invoke(app, ["predict", str(folder), "--model", str(ckpt), "--engine", "ray", "-o", str(tmp_path / "file.jsonl")])
    assert res.exit_code == 2 and "is a file" in res.output
    assert (tmp_path / "file.jsonl").read_text() == "{}\n"


def test_without_ray_one_line_names_the_extra_and_nothing_is_written(tmp_path):
    code = ("import sys\nsys.modules['ray'] = None\n"
            f"sys.argv = ['lolscan', 'predict', {str(REPO / 'models' / 'examples')!r}, '--engine', 'ray', '-o', {str(tmp_path / 'o.jsonl')!r}]\n"
            "from lolscan.cli.app import main\nmain()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 3  # as every missing optional package (README, Exit codes)
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and 'pip install "lolscan[ray]"' in lines[0], out.stderr
    assert list(tmp_path.iterdir()) == []


def test_help_does_not_import_ray():
    code, _, mods = run_cli_modules(["predict", "--help"])
    assert code == 0 and "ray" not in mods
