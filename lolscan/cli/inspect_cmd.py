"""`lolscan inspect`: what is inside one or many LoRA files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import EXIT_BAD_INPUT, LolscanError, elide, nonfinite_text
from ..utils.files import finite_json
from .app import app
from .console import console, print_error, print_warning
from .plain import PlainCommand, examples
from .options import AllowPickle, CivitaiToken, FollowSymlinks, HfToken, Offline, source_options

INSPECT_SCHEMA_VERSION = 1


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _summary_table(r: dict[str, Any]) -> Table:
    """Names and metadata come from the file: every such text is escaped, never read as rich markup."""
    t = Table(title=f"[bold]{escape(r['source'])}[/]", show_header=False, title_justify="left", expand=False)
    t.add_column(style="cyan", no_wrap=True)
    t.add_column(overflow="fold")
    ranks = str(r["rank_min"]) if r["rank_min"] == r["rank_max"] else f"{r['rank_min']}–{r['rank_max']} [yellow](mixed)[/]"
    rows = [
        ("format", escape(r["format"])),
        ("base family", escape(r["family"])),
        ("modules", str(r["modules"])),
        ("rank", ranks),
        ("alpha", ", ".join(_fmt(a) for a in r["alphas"]) or "– (scale 1)"),
        ("effective scale", ", ".join(_fmt(s) for s in r["scales"])),
        ("dtype", escape(r["dtype"]) or "–"),
        ("DoRA", "yes (magnitude vectors; ΔW needs the base weights)" if r["dora"] else "no"),
        ("NaN/Inf", f"[red]{len(r['nonfinite_modules'])} module(s)[/]" if r["nonfinite_modules"] else "none"),
    ]
    if "sha256" in r:
        rows += [("SHA-256", r["sha256"]), ("AutoV2", r["autov2"])]
    if r["extra_tensors"]:
        names = list(r["extra_tensors"])
        rows.append(("other tensors", escape(f"{len(names)} not LoRA (e.g. {', '.join(names[:3])})")))
    for w in r["warnings"]:
        rows.append(("[yellow]warning[/]", escape(w)))
    for key, value in r["metadata"].items():
        text = value if isinstance(value, str) else json.dumps(value)
        rows.append((escape(key), escape(text if len(text) <= 200 else text[:197] + "…")))
    for k, v in rows:
        t.add_row(k, v)
    return t


def _module_table(r: dict[str, Any], limit: int) -> Table:
    t = Table(title="per module (ΔW computed from the factors)", title_justify="left")
    for col, just in (("module", "left"), ("n×m", "right"), ("kind", "left"), ("rank", "right"),
                      ("eff. rank", "right"), ("‖ΔW‖_F", "right"), ("‖ΔW‖_2", "right")):
        t.add_column(col, justify=just, overflow="fold" if col == "module" else "ellipsis")
    items = list(r["per_module"].items())
    for name, s in items[: limit or None]:
        flag = "" if s["finite"] else " [red]NaN/Inf[/]"
        t.add_row(escape(name) + flag, f"{s['n']}×{s['m']}", escape(s["kind"] + ("" if s["algo"] == "lora" else f"/{s['algo']}")),
                  str(s["rank"]), _fmt(s["effective_rank"]), _fmt(s["frobenius"]), _fmt(s["spectral"]))
    if limit and len(items) > limit:
        t.caption = f"{len(items) - limit} more modules: --modules 0 shows all"
    return t


@app.command(cls=PlainCommand, epilog=examples(
    "lolscan inspect my_lora.safetensors",
    "lolscan inspect ./peft_adapter/ --modules 0",
    "lolscan inspect ./loras/ \"more/**/*.safetensors\"",
    "lolscan inspect ./loras/ --json > report.json",
))
def inspect(
    targets: Annotated[list[str], typer.Argument(help="LoRA files, PEFT folders, folders or globs of many, or hf:// / civitai: URIs.")],
    as_json: Annotated[bool, typer.Option("--json", help="Write machine-readable JSON to stdout.")] = False,
    modules: Annotated[int, typer.Option("--modules", help="Per-module rows to show in the table (0 = all).")] = 12,
    allow_pickle: AllowPickle = False,
    allow_nonfinite: Annotated[bool, typer.Option("--allow-nonfinite", help="Adapters holding NaN/Inf values are still reported, with a warning, but do not make the exit code 3.")] = False,
    follow_symlinks: FollowSymlinks = False,
    offline: Offline = False,
    civitai_token: CivitaiToken = None,
    hf_token: HfToken = None,
) -> None:
    """Show what is inside LoRA adapters: format, base family, ranks, scales, per-module spectra, hashes, metadata.

    Exit codes: 0 ok, 2 usage error, 3 an adapter could not be read or holds NaN/Inf values (unless
    --allow-nonfinite; it is still reported, and listed under "errors" in --json).
    """
    from ..inspect_fast import inspect_light  # numpy: not needed for --help
    from ..scan.discovery import expand

    opts = source_options(offline, civitai_token, hf_token)
    reports, errors, warnings = [], [], []
    for found in expand(targets, allow_pickle=allow_pickle, follow_symlinks=follow_symlinks):
        if found.error:
            errors.append({"source": found.source, "error": f"{elide(found.source)}: {found.error}"})
            continue
        try:
            report = inspect_light(found.source)  # plain LoRA files without torch; None: the torch path below
            if report is None:
                report = _inspect_full(found.source, allow_pickle, opts)
        except LolscanError as exc:
            errors.append({"source": found.source, "error": str(exc)})
            continue
        except Exception as exc:  # a reader bug must not cost the other files their report, nor print a traceback
            errors.append({"source": found.source, "error": f"{elide(found.source)}: could not be read "
                                                            f"(unexpected {type(exc).__name__}: {elide(str(exc), 160)})"})
            continue
        reports.append(report)
        if report["nonfinite_modules"]:  # reported, but bad input like an unreadable file (as in predict)
            problem = f"{elide(found.source)}: {nonfinite_text(report['nonfinite_modules'])}"
            (warnings if allow_nonfinite else errors).append({"source": found.source, "error": problem})
        if not as_json:
            console.print(_summary_table(report))
            if modules >= 0:
                console.print(_module_table(report, modules))
    for w in warnings:
        print_warning(w["error"])
    for e in errors:
        print_error(e['error'])
    if as_json:
        doc = {"schema_version": INSPECT_SCHEMA_VERSION, "adapters": reports, "errors": errors}
        print(json.dumps(finite_json(doc), indent=2, allow_nan=False))  # a norm beyond float32's range: null
    if errors:
        raise typer.Exit(EXIT_BAD_INPUT)


def _inspect_full(source: str, allow_pickle: bool, opts: dict[str, Any]) -> dict[str, Any]:
    """`lolscan.load` and `inspection.inspect_adapter`: every format, remote URIs; imports torch."""
    from .. import load
    from ..inspection import inspect_adapter

    adapter = load(source, allow_pickle=allow_pickle, **opts)
    path = Path(source)
    return inspect_adapter(adapter, path if path.exists() else _resolved_path(adapter))


def _resolved_path(adapter) -> Path | None:
    local = (adapter.metadata.get("source") or {}).get("local_path")
    return Path(local) if local else None
