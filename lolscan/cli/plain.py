"""Plain help: metavars a person reads (``TARGET...``, ``N``, ``table|json``, no ``<list[str]>``,
``<bool>`` or ``{targets}...``), shared by every command through ``cls=PlainCommand``; and option values
converted without pydantic where that is exact (`light_runtime_param`)."""
from __future__ import annotations

import re
import types
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
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


_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MISS = object()


def _in_range(x: Any, info: Any) -> Any:
    if info.clamp or (info.min is not None and x < info.min) or (info.max is not None and x > info.max):
        return _MISS  # typer's message (or clamping) comes from its own adapter
    return x


def _leaf(annotation: Any, desc: Any, value: Any, ctx: Any, param: Any) -> Any:
    """``value`` converted as typer's pydantic adapter converts it, for the plain cases; `_MISS` otherwise."""
    from typer._param_types import coerce_cli_choice, coerce_cli_path

    info = desc.parameter_info
    if info.parser is not None:
        return _MISS
    if desc.is_choice:
        if not isinstance(value, str):
            return _MISS
        try:
            return coerce_cli_choice(value, choices=desc.choices, case_sensitive=desc.case_sensitive, ctx=ctx)
        except ValueError:
            return _MISS
    if annotation is str:
        return value if isinstance(value, str) else _MISS
    if annotation is int:
        if type(value) is int:
            return _in_range(value, info)
        return _in_range(int(value), info) if isinstance(value, str) and _INT.fullmatch(value) else _MISS
    if annotation is float:
        if type(value) is float:
            return _in_range(value, info)
        return _in_range(float(value), info) if isinstance(value, str) and _FLOAT.fullmatch(value) else _MISS
    if annotation is bool:
        return value if type(value) is bool else _MISS
    if desc.is_path and isinstance(annotation, type) and issubclass(annotation, Path) and info.path_type is None:
        if isinstance(value, str) and value:
            value = annotation(value)  # what pydantic's Path validator gives; the checks are typer's own
        if isinstance(value, annotation):
            return coerce_cli_path(value, info, path_type=annotation, param=param, ctx=ctx)
    return _MISS


@lru_cache(maxsize=1)
def _light_class() -> Any:
    """The RuntimeParam subclass, made once (a dataclass per option per command cost about 3 ms each)."""
    try:
        from typer._coercion import RuntimeParam, build_runtime_param
    except ImportError:
        return None

    @dataclass(frozen=True)
    class LightRuntimeParam(RuntimeParam):
        descriptor: Any = None

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            d = self.descriptor
            if d.is_list and not d.is_choice:
                (item,) = get_args(d.annotation) or (None,)
                got = [_leaf(item, d, v, ctx, param) for v in value] if isinstance(value, (list, tuple)) else [_MISS]
                if _MISS not in got:
                    return got
            elif not (d.is_list or d.is_tuple or d.is_file):
                got = _leaf(d.annotation, d, value, ctx, param)
                if got is not _MISS:
                    return got
            return build_runtime_param(d)._coerce_value(value, param=param, ctx=ctx)

    return LightRuntimeParam


def light_runtime_param(desc: Any) -> Any:
    """A typer `RuntimeParam` that converts str, int, float, bool, Path, Literal and list[str] values the
    way typer's pydantic TypeAdapter does, without importing pydantic (about 0.1 s of every command's
    start); any other annotation or value, including every invalid one (so the error message is
    typer's), goes to the adapter typer would have built. None where typer lacks these internals."""
    cls = _light_class()
    return None if cls is None else cls(parameter_info=desc.parameter_info, annotation=desc.annotation, descriptor=desc)


def plain(params: list[Any]) -> list[Any]:
    for p in params:
        if getattr(p, "_lolscan_plain", False):
            continue
        desc = getattr(p, "type_descriptor", None)
        if desc is not None and getattr(p, "_runtime_param", False) is None:
            p._runtime_param = light_runtime_param(desc)
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
