"""Plain help: metavars a person reads (``TARGET...``, ``N``, ``table|json``, no ``<list[str]>``,
``<bool>`` or ``{targets}...``), shared by every command through ``cls=PlainCommand``."""
from __future__ import annotations

import types
from typing import Any, get_args

import typer.core

_BY_TYPE = {int: "N", float: "NUMBER", str: "TEXT"}


def _default_metavar(param: Any) -> str | None:
    desc = getattr(param, "type_descriptor", None)
    if desc is None:  # another typer: leave its metavars alone
        return None
    if getattr(param, "is_flag", False):
        return ""
    if desc.is_choice:
        return "|".join(str(c) for c in (desc.choices or ()))
    if desc.is_path:
        return "PATH"
    ann = desc.annotation
    if desc.is_list:
        (ann,) = get_args(ann) or (str,)
    return _BY_TYPE.get(ann, "VALUE")


def _plain_argument(param: Any) -> None:
    name = param.metavar or param.name.upper()
    many = param.nargs != 1
    if many and not name.endswith("..."):
        name = name.rstrip("S") + "..." if name.endswith("S") else name + "..."
    shown = name if param.required else f"[{name}]"
    param.metavar = name
    # typer shows arguments as ``{name}...`` in the usage line and adds their type: neither, here.
    param._usage_display_name = types.MethodType(lambda self: shown, param)
    param._rich_display_name = types.MethodType(lambda self: name, param)
    param.display_type_rich = types.MethodType(lambda self, ctx: None, param)


def plain(params: list[Any]) -> list[Any]:
    for p in params:
        if getattr(p, "_lolscan_plain", False):
            continue
        if isinstance(p, typer.core.TyperArgument):
            _plain_argument(p)
        elif p.metavar is None:
            m = _default_metavar(p)
            if m is not None:
                p.metavar = m
        p._lolscan_plain = True
    return params


class PlainCommand(typer.core.TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return plain(super().get_params(ctx))


class PlainGroup(typer.core.TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return plain(super().get_params(ctx))


def examples(*lines: str) -> str:
    """A help epilog listing example command lines (kept one per line)."""
    return "Examples:\n\n" + "\n".join(lines)
