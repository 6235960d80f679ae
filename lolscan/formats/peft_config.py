"""PEFT's adapter_config.json (reading it, its scaling rules) and diffusers' per-component
`lora_adapter_metadata`. No torch: the light reader processes use these too."""
from __future__ import annotations

import functools
import json
import math
import os
import re
import stat
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import InputError, UnsupportedFormat, elide, quoted
from ..utils.files import PEFT_CONFIG_NAME, PEFT_WEIGHT_NAMES

if sys.version_info >= (3, 11):
    import re._parser as _sre_parser
else:  # pragma: no cover - Python 3.10
    import sre_parse as _sre_parser

CONFIG_NAME, WEIGHT_NAMES = PEFT_CONFIG_NAME, PEFT_WEIGHT_NAMES  # defined below sources, which download them

# Adapter methods that change W in a way that needs the base weights to express as ΔW.
BASE_DEPENDENT_PEFT_TYPES = {"OFT", "BOFT", "IA3", "VERA", "FOURIERFT", "HRA", "LN_TUNING", "VBLORA", "BONE", "C3A", "SHIRA", "MISS"}
LOW_RANK_PEFT_TYPES = {"LORA", "LOHA", "LOKR", "ADALORA"}


def is_peft_folder(path: Path) -> bool:
    """A folder holding an adapter_config.json entry (whatever it is: `read_config` refuses one that is
    not a regular file, rather than the folder being read as a bare weights file)."""
    return path.is_dir() and os.path.lexists(path / CONFIG_NAME)


def check_peft_type(config: dict[str, Any], path: Path | str) -> str:
    peft_type = str(config.get("peft_type") or "LORA").upper()
    if peft_type in BASE_DEPENDENT_PEFT_TYPES:
        raise UnsupportedFormat(f"PEFT {peft_type} adapters change W through the base weights; their ΔW cannot be expressed without the base model", path=path)
    if peft_type not in LOW_RANK_PEFT_TYPES:
        raise UnsupportedFormat(f"PEFT adapter type {peft_type!r} is not supported (LORA, LOHA, LOKR are)", path=path)
    return peft_type


def module_path(key_module: str) -> str:
    """Path inside the base model, as PEFT's patterns see it (no `base_model.model.` wrapper)."""
    return key_module.removeprefix("base_model.model.")


def read_config(path: Path) -> dict[str, Any]:
    """adapter_config.json, its values checked (`check_config`): a bad one is one `InputError` line."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise InputError("adapter_config.json is not a regular file", path=path)
        if st.st_size > MAX_CONFIG_BYTES:
            raise InputError(f"adapter_config.json is over {MAX_CONFIG_BYTES >> 20} MB", path=path)
        config = json.loads(path.read_text(encoding="utf-8"), parse_constant=_keep_constant)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, integers of over 4,300 digits
        raise InputError(f"unreadable adapter_config.json ({type(exc).__name__})", path=path) from None
    except RecursionError:
        raise InputError("unreadable adapter_config.json (nested too deeply)", path=path) from None
    if not isinstance(config, dict):
        raise InputError("adapter_config.json is not a JSON object", path=path)
    try:
        check_config(config)
    except InputError as exc:
        raise InputError(str(exc).removeprefix("adapter_config.json: "), path=path) from None
    return config


MAX_CONFIG_BYTES = 64 << 20
MAX_RANK = 1 << 24  # r and rank_pattern values (alpha / r stays a float)
MAX_PATTERN_CHARS = 256  # one rank_pattern/alpha_pattern key
MAX_MATCHED_PATH = 512  # module names a regular-expression key is matched against
MAX_REGEX_REPEATS = 2  # repeats (*, +, {m,n}) in one key; nested ones are refused whatever their number
PATTERN_SECONDS = 2.0  # all regular-expression matching for one set of patterns, distinct module names


def _keep_constant(name: str) -> float:
    return float(name)  # NaN/Infinity parse (as peft's json.load does); check_config refuses them


def _number(key: str, value: Any, *, integer: bool = False) -> float:
    """A config value that must be a finite number ≥ 0 (an integer ≥ 1 for ranks)."""
    if integer:
        if type(value) is not int or not 1 <= value <= MAX_RANK:
            raise InputError(f"adapter_config.json: {key} must be an integer from 1 to {MAX_RANK}, got {elide(repr(value), 60)}")
        return value
    if type(value) not in (int, float):
        raise InputError(f"adapter_config.json: {key} must be a number, got {elide(repr(value), 60)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise InputError(f"adapter_config.json: {key} must be a finite number ≥ 0, got {elide(repr(value), 60)}")
    return number


def check_config(config: dict[str, Any]) -> None:
    """The values lolscan reads from an adapter config (also diffusers' per-component ones): r and
    rank_pattern values integers ≥ 1, lora_alpha/alpha and alpha_pattern values finite numbers ≥ 0
    (0 is peft's scale 0), use_rslora a boolean, pattern keys ones `patterns_of` accepts."""
    if "r" in config:
        _number("r", config["r"], integer=True)
    for key in ("lora_alpha", "alpha"):
        if key in config:
            _number(key, config[key])
    if config.get("use_rslora") not in (None, True, False):
        raise InputError(f"adapter_config.json: use_rslora must be true or false, got {elide(repr(config['use_rslora']), 60)}")
    for field in ("rank_pattern", "alpha_pattern"):
        patterns_of(config, field)


def patterns_of(config: dict[str, Any], field: str) -> Patterns | None:
    """The checked, compiled ``rank_pattern``/``alpha_pattern`` of a config (None when empty)."""
    raw = config.get(field)
    if raw is None or raw == {}:
        return None
    if not isinstance(raw, dict):
        raise InputError(f"adapter_config.json: {field} must be an object mapping module names to numbers, got {type(raw).__name__}")
    for key, value in raw.items():
        if not isinstance(key, str):
            raise InputError(f"adapter_config.json: {field} keys must be strings")
        _number(f"{field}[{quoted(key, 60)}]", value, integer=field == "rank_pattern")
    return _compile(field, tuple(raw.items()))


@functools.lru_cache(maxsize=256)
def _compile(field: str, items: tuple[tuple[str, Any], ...]) -> Patterns:
    return Patterns(field, items)


class Patterns:
    """peft's ``get_pattern_key``: the first key (in dict order) for which
    ``re.match(rf"(.*\\.)?({key})$", module_path)`` matches wins, i.e. the key equals the module path
    or its tail after a dot (``proj`` matches ``a.proj``, not ``a.q_proj``), read as a regular
    expression.

    What peft does with any expression, lolscan does only within bounds: a key of plain name
    characters is looked up in a dict (no regex runs); any other key is compiled as peft composes it,
    after a check of its parse tree — at most 256 characters, at most two repeats, none nested, no
    alternation inside a repeat, no backreference or lookaround (the shapes that backtrack
    exponentially, like ``(.*)*x$``) — and is matched only against module paths of at most 512
    characters, with all matching for one set of patterns capped at a couple of seconds. Whatever
    falls outside is an `InputError` naming the key, never a hang.
    """

    def __init__(self, field: str, items: tuple[tuple[str, Any], ...]):
        self.field = field
        self.values = [value for _, value in items]
        self.plain: dict[str, int] = {}  # key -> its index (the first, if repeated)
        self.regex: list[tuple[int, str, re.Pattern[str]]] = []
        for i, (key, _) in enumerate(items):
            if _PLAIN_KEY.fullmatch(key):
                self.plain.setdefault(key, i)
            else:
                self.regex.append((i, key, _safe_regex(field, key)))
        self._memo: dict[str, int | None] = {}
        self._spent = 0.0

    def index(self, path: str) -> int | None:
        """Index of the first key matching ``path`` (None: no key does)."""
        memo = self._memo
        if path in memo:
            return memo[path]
        best: int | None = None
        if self.plain and "\n" not in path:  # a newline changes what `.*` and `$` do: the regex decides
            best = self.plain.get(path)
            at = path.find(".")
            while at >= 0:
                i = self.plain.get(path[at + 1 :])
                if i is not None and (best is None or i < best):
                    best = i
                at = path.find(".", at + 1)
        elif self.plain:
            for key, i in self.plain.items():
                if re.match(rf"(.*\.)?({key})$", path) and (best is None or i < best):
                    best = i
        for i, key, rx in self.regex:
            if best is not None and i > best:
                break
            if len(path) > MAX_MATCHED_PATH:
                raise InputError(f"{self.field}: module name of {len(path)} characters is too long to match against "
                                 f"the regular expression {quoted(key, 60)} (limit {MAX_MATCHED_PATH})")
            t0 = time.perf_counter()
            hit = rx.match(path) is not None
            self._spent += time.perf_counter() - t0
            if self._spent > PATTERN_SECONDS:
                raise InputError(f"{self.field}: matching its regular expressions took over {PATTERN_SECONDS:g} s "
                                 f"(last key {quoted(key, 60)}); use plain module names")
            if hit:
                best = i
                break
        if len(memo) < 1 << 16:
            memo[path] = best
        return best

    def value(self, path: str) -> Any | None:
        i = self.index(path)
        return None if i is None else self.values[i]


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]+")
_REPEATS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
_REFUSED_OPS = {"GROUPREF": "a backreference", "GROUPREF_EXISTS": "a conditional group", "ASSERT": "a lookaround",
                "ASSERT_NOT": "a lookaround", "ATOMIC_GROUP": "an atomic group"}


def _safe_regex(field: str, key: str) -> re.Pattern[str]:
    """peft's composed expression for ``key``, after the checks of `Patterns`."""
    where = f"adapter_config.json: {field} key {quoted(key, 60)}"
    if len(key) > MAX_PATTERN_CHARS:
        raise InputError(f"{where} is {len(key)} characters long (limit {MAX_PATTERN_CHARS})")
    try:
        tree = _sre_parser.parse(key)
        why = _complexity(list(tree), inside_repeat=False)
        rx = re.compile(rf"(.*\.)?({key})$")
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        raise InputError(f"{where} is not a valid regular expression ({elide(str(exc), 80)})") from None
    if isinstance(why, str):
        raise InputError(f"{where}: lolscan does not run regular expressions with {why} (they can backtrack for "
                         "minutes); write plain module names, or simpler patterns")
    if why > MAX_REGEX_REPEATS:
        raise InputError(f"{where}: lolscan does not run regular expressions with more than {MAX_REGEX_REPEATS} repeats "
                         "(*, +, {m,n}); write plain module names, or simpler patterns")
    return rx


def _complexity(items: list[Any], *, inside_repeat: bool) -> int | str:
    """Repeats in a parsed expression, or why it is refused."""
    count = 0
    for op, av in items:
        name = str(op)
        sub: list[Any] = []
        if name in _REPEATS:
            _, hi, body = av
            if hi > 1:
                if inside_repeat:
                    return "nested repeats"
                if any(str(o) == "BRANCH" for o, _ in _walk(list(body))):
                    return "an alternation inside a repeat"
                got = _complexity(list(body), inside_repeat=True)
                if isinstance(got, str):
                    return got
                count += 1 + got
                continue
            sub = [list(body)]
        elif name == "SUBPATTERN":
            sub = [list(av[-1])]
        elif name == "BRANCH":
            sub = [list(b) for b in av[1]]
        elif name in _REFUSED_OPS:
            return _REFUSED_OPS[name]
        for s in sub:
            got = _complexity(s, inside_repeat=inside_repeat)
            if isinstance(got, str):
                return got
            count += got
    return count


def _walk(items: list[Any]):
    for op, av in items:
        yield op, av
        name = str(op)
        if name in _REPEATS:
            yield from _walk(list(av[2]))
        elif name == "SUBPATTERN":
            yield from _walk(list(av[-1]))
        elif name == "BRANCH":
            for b in av[1]:
                yield from _walk(list(b))


def pattern_value(patterns: dict[str, Any], module_path: str, field: str = "alpha_pattern") -> Any | None:
    """PEFT's get_pattern_key (see `Patterns`): the value of the first key matching the path's tail."""
    compiled = patterns_of({field: patterns}, field)
    return None if compiled is None else compiled.value(module_path)


def peft_scale(config: dict[str, Any], module_path: str, rank: int) -> tuple[float, float]:
    """(scale, alpha) for one module: alpha/r, or alpha/√r with rsLoRA. `rank` comes from the tensors;
    alpha from alpha_pattern, else lora_alpha (peft's LoraConfig default: 8)."""
    patterns = patterns_of(config, "alpha_pattern")
    alpha = patterns.value(module_path) if patterns is not None else None
    if alpha is None:
        alpha = config.get("lora_alpha", 8)
    alpha = _number("lora_alpha", alpha)
    if rank < 1:
        raise InputError(f"module {quoted(module_path)}: rank {rank} (empty factors)")
    if config.get("use_rslora"):
        return alpha / math.sqrt(rank), alpha
    return alpha / rank, alpha


def peft_lycoris_scale(config: dict[str, Any], module_path: str) -> tuple[float, float]:
    """(scale, alpha) of a PEFT LoHa/LoKr module: peft's ``alpha / r`` with r and alpha from
    rank_pattern/alpha_pattern or the config's r/alpha (LycorisConfig defaults 8/8), whatever
    the tensor shapes. Unlike LyCORIS/ComfyUI, a LoKr with both Kronecker factors full still
    gets ``alpha / r``, and alpha 0 gives scale 0."""
    ranks, alphas = patterns_of(config, "rank_pattern"), patterns_of(config, "alpha_pattern")
    rank = ranks.value(module_path) if ranks is not None else None
    if rank is None:
        rank = config.get("r", 8)
    alpha = alphas.value(module_path) if alphas is not None else None
    if alpha is None:
        alpha = config.get("alpha", 8)
    rank = _number("r", rank, integer=True)
    alpha = _number("alpha", alpha)
    return alpha / rank, alpha


def split_component_metadata(raw: str | None) -> dict[str, dict[str, Any]]:
    """diffusers' `lora_adapter_metadata`: {"unet.r": 4, "unet.lora_alpha": 8, …} → {"unet": {...}}."""
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    if not isinstance(flat, dict):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        component, _, field = key.partition(".")
        if field:
            out.setdefault(component, {})[field] = value
    return out
