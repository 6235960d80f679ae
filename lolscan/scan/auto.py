"""`lolscan predict` without ``--model``: every bundled checkpoint that fits the adapters.

The rule, for a run over one adapter or many: the adapters are taken in the order they are found, and
the first one that some bundled checkpoint fits (`checkpoint.check_fits`: module names, shapes, the
base model its source declares, a fixed rank) chooses the checkpoints of the run: every bundled
checkpoint that fits it (of its layer spec, so that each adapter is read and collated once for all of
them, `checkpoint.CheckpointSet`). The adapters before it, which no bundled checkpoint fits, and the
adapters after it that the chosen checkpoints do not fit are reported as not fitting (exit code 4),
saying which bundled checkpoints fit them if any do (run those on their own) or, if none, what the
adapter looks like and how to build a checkpoint for it.

Nothing here prints; the probe reads the adapters before the first fitting one once (their rows are
final) and the first fitting one once more in the scan.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IncompatibleAdapter, elide

NO_FIT = "no bundled checkpoint fits it"  # how the error of an adapter no bundled checkpoint fits starts
OTHER_FIT = "does not fit the bundled checkpoints this run chose"  # ... of one that others fit


@dataclass
class Candidate:
    """A bundled checkpoint as its card describes it (its weights are not read)."""

    name: str
    path: Path
    rule: dict[str, Any]  # what `Checkpoint.fit_rule` would say

    @property
    def spec(self) -> Any:
        return _spec(self.rule)


@dataclass
class Choice:
    """The bundled checkpoints a run uses (none: no adapter fits any), the adapter that chose them,
    and the final rows of the adapters read before it (by source)."""

    chosen: list[Candidate]
    chosen_by: str | None
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)

    def auto(self) -> dict[str, Any]:
        """What the scan's readers need to explain an adapter the chosen checkpoints do not fit."""
        names = {c.name for c in self.chosen}
        return {"chosen": [c.name for c in self.chosen], "chosen_by": self.chosen_by,
                "others": [c.rule for c in self.candidates if c.name not in names],
                "bases": sorted({c.rule["base_model"] for c in self.candidates})}


def candidates() -> list[Candidate]:
    """The bundled checkpoints with a readable card, by folder name (a broken one is left out: `lolscan
    models` reports it)."""
    from ..checkpoint import CheckpointError, bundled_dir, is_checkpoint, read_card
    from ..nets.names import FIXED_RANK_ARCHS

    root = bundled_dir()
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not is_checkpoint(p):
            continue
        try:
            card = read_card(p)
            spec = _spec({"spec": card["layer_spec"]})
        except (CheckpointError, ValueError, TypeError):
            continue
        arch = card["architecture"]
        name = card.get("name") or p.name
        rule = {"spec": spec.to_json(), "name": name, "base_model": card.get("base_model", "unknown"), "architecture": arch,
                "rank": card["hparams"].get("rank") if arch in FIXED_RANK_ARCHS else None}
        out.append(Candidate(name, p, rule))
    return out


_SPECS: dict[str, Any] = {}


def _spec(rule: dict[str, Any]) -> Any:
    """The `LayerSpec` of a fit rule (built once per spec)."""
    from ..nets import LayerSpec

    key = json.dumps(rule["spec"], sort_keys=True)
    if key not in _SPECS:
        _SPECS[key] = LayerSpec.from_json(rule["spec"])
    return _SPECS[key]


def fits(adapter: Any, rule: dict[str, Any]) -> bool:
    from ..checkpoint import check_fits

    try:
        check_fits(adapter, _spec(rule), rule)
    except IncompatibleAdapter:
        return False
    return True


def choose(found: list[Any], todo: set[str], allow_pickle: bool, source_options: dict[str, Any],
           cands: list[Candidate] | None = None) -> Choice:
    """Read ``found`` in order up to the first adapter some bundled checkpoint fits; the rows of the
    adapters before it that are in ``todo`` (sources) are final: unreadable, or fitting none."""
    from .scoring import read_adapter

    cands = candidates() if cands is None else cands
    rows: dict[str, dict[str, Any]] = {}
    for f in found:
        if f.error:
            if f.source in todo:
                rows[f.source] = {**read_error_row(f.source), "error": f.error}
            continue
        row, adapter = read_adapter(f.source, allow_pickle, source_options)
        if adapter is None:
            if f.source in todo:
                rows[f.source] = row
            continue
        fitting = [c for c in cands if fits(adapter, c.rule)]
        if fitting:  # these, of one layer spec (the first's): one read serves them all
            chosen = [c for c in fitting if c.rule["spec"] == fitting[0].rule["spec"]]
            return Choice(chosen, f.source, rows, cands)
        if f.source in todo:
            row.update(status="incompatible", error=no_fit_message(adapter, cands))
            rows[f.source] = row
    return Choice([], None, rows, cands)


def read_error_row(source: str) -> dict[str, Any]:
    from .lightread import base_row

    row = base_row(source)
    row["status"] = "error"
    return row


def misfit_message(adapter: Any, auto: dict[str, Any]) -> str:
    """The error of an adapter the chosen bundled checkpoints do not fit: the other bundled checkpoints
    that fit it, or (none) `no_fit_message`."""
    others = [r["name"] for r in auto.get("others", ()) if fits(adapter, r)]
    if others:
        by = Path(str(auto.get("chosen_by") or "")).name or "?"
        return (f"{OTHER_FIT} ({', '.join(auto['chosen'])}: those that fit the first adapter, {elide(by, 80)}); "
                f"bundled {', '.join(others)} {'fits' if len(others) == 1 else 'fit'} it: score it on its own (`lolscan predict FILE`)")
    return no_fit_message(adapter, list(auto.get("bases", ())))


def no_fit_message(adapter: Any, cands: list[Candidate] | list[str]) -> str:
    """What an adapter no bundled checkpoint fits looks like (its family, modules and a shape) and how to
    build a checkpoint for it. ``cands``: the bundled checkpoints (or their base models)."""
    from ..formats.family import (
        FAMILY_NAMES,
        diffusion_kind,
        diffusion_parts,
        guess_family,
        short_base_model,
    )

    family = guess_family(adapter)
    kind = diffusion_kind(family)
    if kind:
        what = f"it is {'an' if kind == 'sdxl' else 'a'} {FAMILY_NAMES.get(kind, kind)} {diffusion_parts(adapter.layers)} LoRA"
    else:
        what = f"it looks like {family}"
    n = len(adapter.layers)
    first = next(iter(adapter.layers.items()), None)
    example = f", e.g. {elide(first[0], 60)} {first[1].n}×{first[1].m}" if first is not None else ""
    bases = sorted({short_base_model(c.rule["base_model"] if isinstance(c, Candidate) else str(c)) for c in cands})
    covered = f"; the bundled checkpoints are for {', '.join(bases)}" if bases else ""
    return f"{NO_FIT}: {what} ({n} module{'s' if n != 1 else ''}{example}){covered}; {build_hint(kind)}"


def build_hint(kind: str | None) -> str:
    """How to build a checkpoint for a LoRA of a base model no bundled checkpoint covers: zoo, train,
    predict. ``kind``: `formats.family.diffusion_kind` of the LoRA (None: not a diffusion model)."""
    from ..formats.family import FAMILY_NAMES

    train = "then `lolscan train ZOO/manifest.jsonl --target clip_score --out my-sd-model`, then `lolscan predict FILE --model my-sd-model`"
    if kind == "diffusion":
        return ("build one: `lolscan zoo build RECIPE ZOO --device cuda` (recipes/sd15-shapes-attn.toml: Stable Diffusion 1.5; "
                f"recipes/inhouse-fashion-classes.toml: lolscan's pixel base), {train}")
    if kind in ("sd1", "sd2"):
        recipe = ("recipes/sd15-shapes-attn.toml" if kind == "sd1" else
                  "RECIPE.toml` (recipes/sd15-shapes-attn.toml with [base] path set to a Stable Diffusion 2.x pipeline) `")
        return f"build one: `lolscan zoo build {recipe} ZOO --device cuda`, {train}"
    if kind:
        return (f"`lolscan zoo build` makes Stable Diffusion 1.x/2.x zoos only so far; `lolscan train MANIFEST --out my-model` "
                f"fits one on your own labelled {FAMILY_NAMES.get(kind, kind)} LoRAs, then `lolscan predict FILE --model my-model`")
    return ("build one: `lolscan zoo build RECIPE ZOO` (recipes/ holds examples), then `lolscan train ZOO/manifest.jsonl "
            "--out NAME`, then `lolscan predict FILE --model NAME`")
