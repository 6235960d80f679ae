"""The loaded checkpoint: `Checkpoint` (a model with its card, which predicts and saves itself),
`CheckpointSet` (several scoring one batch), `load_checkpoint` and whether an adapter fits (`check_fits`)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import IncompatibleAdapter, UsageError
from ..nets.names import FIXED_RANK_ARCHS  # torch-free, as the card's names
from ..targets import Target
from .card import CARD_NAME, CheckpointError, read_card, validate_card
from .locations import is_checkpoint, resolve
from .shards import read_weights, write_weights

if TYPE_CHECKING:  # torch only where a model is built or run: `lolscan models` reads cards without it
    import torch

    from ..adapter import Adapter


@dataclass
class Checkpoint:
    model: torch.nn.Module
    card: dict[str, Any]
    targets: list[Target]
    spec: Any  # LayerSpec
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.card.get("name") or (self.path.name if self.path else "model")

    @property
    def architecture(self) -> str:
        return self.card["architecture"]

    @property
    def base_model(self) -> str:
        return self.card.get("base_model", "unknown")

    @property
    def device(self) -> torch.device:
        return next(iter(self.model.parameters())).device

    @property
    def members(self) -> list[Checkpoint]:
        """The checkpoints whose predictions this one reports: itself (a `CheckpointSet`: several)."""
        return [self]

    def row_fields(self) -> dict[str, Any]:
        """Fields a scored row gets besides its predictions (a `CheckpointSet`: which model gave each target)."""
        return {}

    def info(self) -> dict[str, Any]:
        """What reports say about the model."""
        return {
            "name": self.name,
            "path": str(self.path) if self.path else None,
            "architecture": self.architecture,
            "base_model": self.base_model,
            "targets": [{"name": t.name, "kind": t.kind, "units": t.units, "labels": t.labels} for t in self.targets],
        }

    def fit_rule(self) -> dict[str, Any]:
        """What `check_fits` needs (JSON-able, so reader processes can check without the model)."""
        rank = self.card["hparams"].get("rank") if self.architecture in FIXED_RANK_ARCHS else None
        rule = {"spec": self.spec.to_json(), "name": self.name, "base_model": self.base_model, "architecture": self.architecture, "rank": rank}
        if "auto" in self.extra:  # chosen among the bundled checkpoints: what to say of an adapter that does not fit
            rule["auto"] = self.extra["auto"]
        return rule

    def require_fits(self, adapter: Adapter) -> None:
        """Refuse an adapter this model cannot read, naming what differs (exit code 4)."""
        check_fits(adapter, self.spec, self.fit_rule())

    def scores(self, adapters: list[Adapter] | Any) -> dict[str, torch.Tensor]:
        """Per-target scores (regression values in units, class probabilities) for fitting adapters,
        given as a list or as an already collated `FactorBatch`."""
        import torch

        from ..nets import FactorBatch, collate

        self.model.eval()
        batch = adapters if isinstance(adapters, FactorBatch) else collate(adapters, self.spec, self.device, dtype=_model_dtype(self.model), check=False)
        with torch.no_grad():
            out = self.model(batch).float().cpu()
        return {t.name: t.scores(out) for t in self.targets}

    @property
    def domain(self) -> Any:
        """The card's `lolscan.evaluation.calibration.Domain` (None for checkpoints trained before it existed)."""
        return self.extra.get("domain")

    def domain_rows(self, adapters: list[Adapter] | Any) -> list[dict[str, Any]] | None:
        """Per adapter ``{"score", "in_domain"}`` (None when the checkpoint has no domain reference)."""
        from ..evaluation.calibration import spectra  # computes without autograd
        from ..nets import FactorBatch, collate

        dom = self.domain
        if dom is None:
            return None
        batch = adapters if isinstance(adapters, FactorBatch) else collate(adapters, self.spec, self.device, check=False)
        scores = dom.scores(spectra(batch)).tolist()
        return [{"score": s, "in_domain": bool(s <= dom.threshold)} for s in scores]

    def predict(self, adapters: list[Adapter] | Any) -> list[dict[str, dict[str, Any]]]:
        s = self.scores(adapters)
        n = len(next(iter(s.values())))
        return [{t.name: t.decode(s[t.name][i].tolist()) for t in self.targets} for i in range(n)]

    def save(self, folder: str | Path, *, overwrite: bool = False, files: dict[str, bytes] | None = None,
             max_shard_bytes: int | None = None) -> Path:
        """Write atomically: a temporary sibling folder is renamed into place. Weights larger than
        ``max_shard_bytes`` go into shards with an index (`lolscan.checkpoint.shards`)."""
        dest = Path(folder)
        if files is None and self.path is not None:  # a loaded checkpoint saved anew keeps the files its card names
            named = [str(self.card.get(k, {}).get("file", "")) for k in ("domain", "plot") if isinstance(self.card.get(k), dict)]
            files = {n: (Path(self.path) / n).read_bytes() for n in named if n and (Path(self.path) / n).is_file()}
        if dest.exists() and not overwrite:
            raise UsageError(f"{dest} already exists (pass --overwrite to replace it)")
        if dest.exists() and not is_checkpoint(dest):
            raise UsageError(f"{dest} exists and is not a lolscan checkpoint; refusing to replace it")
        dest.parent.mkdir(parents=True, exist_ok=True)
        import torch

        narrow = self.card.get("weights_dtype", "float32")
        params = {n for n, _ in self.model.named_parameters()} if narrow != "float32" else set()
        state = {k: v.detach().to("cpu", dtype=getattr(torch, narrow) if k in params and v.is_floating_point() else None).contiguous()
                 for k, v in self.model.state_dict().items()}
        card = dict(self.card)
        card["tensors"] = {k: list(v.shape) for k, v in state.items()}
        validate_card(card, dest / CARD_NAME)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is an ordinary folder
            write_weights(state, tmp, max_shard_bytes)
            (tmp / CARD_NAME).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n", encoding="utf-8")
            for name, data in (files or {}).items():
                (tmp / name).write_bytes(data)
            for f in tmp.iterdir():
                os.chmod(f, 0o644)
            if dest.exists():
                old = dest.with_name(f".{dest.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(dest, old)
                os.replace(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.card = card
        self.path = dest
        return dest


class CheckpointSet:
    """Several checkpoints of one layer spec scoring the same adapters: read and collated once, each
    model run on the batch, their targets reported side by side (``lolscan predict`` without --model,
    where several bundled checkpoints fit). Stands in for a `Checkpoint` wherever the scan uses one.

    Two members predicting a target of the same name are refused (`UsageError`): a row holds one
    prediction per target name, and which one to report is the user's choice (``--model``).
    """

    def __init__(self, members: list[Checkpoint]):
        import torch

        if len(members) < 2:
            raise ValueError("a CheckpointSet holds two checkpoints or more")
        first = members[0]
        for m in members[1:]:
            if m.spec.to_json() != first.spec.to_json():
                raise ValueError(f"checkpoints {first.name!r} and {m.name!r} read different layer specs")
        seen: dict[str, str] = {}
        for m in members:
            for t in m.targets:
                if t.name in seen:
                    raise UsageError(f"checkpoints {seen[t.name]!r} and {m.name!r} both predict {t.name!r}; "
                                     f"choose one with --model {seen[t.name]} or --model {m.name}")
                seen[t.name] = m.name
        self._members = list(members)
        self.spec = first.spec
        self.targets: list[Target] = [t for m in members for t in m.targets]
        self.target_models = seen  # target name -> the name of the checkpoint that predicts it
        self.path: Path | None = None
        self.extra: dict[str, Any] = {}
        self.model = torch.nn.ModuleList([m.model for m in members])  # what the scan reads: device, dtype, parameters

    @property
    def members(self) -> list[Checkpoint]:
        return list(self._members)

    @property
    def name(self) -> str:
        return " + ".join(m.name for m in self._members)

    @property
    def architecture(self) -> str:
        return ", ".join(dict.fromkeys(m.architecture for m in self._members))

    @property
    def base_model(self) -> str:
        return self._members[0].base_model

    @property
    def card(self) -> dict[str, Any]:
        return {"name": self.name, "description": ""}

    @property
    def device(self) -> torch.device:
        return self._members[0].device

    @property
    def domain(self) -> Any:
        doms = [m.domain for m in self._members if m.domain is not None]
        return doms[0] if doms else None

    def info(self) -> dict[str, Any]:
        """One checkpoint's fields (name, architecture, base model, targets) for all of them, each target
        naming its checkpoint (``model``), and each checkpoint's own `Checkpoint.info` under ``models``."""
        return {
            "name": self.name,
            "path": None,
            "architecture": self.architecture,
            "base_model": self.base_model,
            "targets": [{"name": t.name, "kind": t.kind, "units": t.units, "labels": t.labels, "model": self.target_models[t.name]}
                        for t in self.targets],
            "models": [m.info() for m in self._members],
        }

    def row_fields(self) -> dict[str, Any]:
        return {"models": dict(self.target_models)}

    def fit_rule(self) -> dict[str, Any]:
        """The members share the spec; the smallest largest-rank of the fixed-rank ones applies to all (an adapter must fit each)."""
        rules = [m.fit_rule() for m in self._members]
        rank = min((r["rank"] for r in rules if r["rank"] is not None), default=None)
        rule = {**rules[0], "name": self.name, "architecture": self.architecture, "rank": rank}
        rule.pop("auto", None)
        if "auto" in self.extra:
            rule["auto"] = self.extra["auto"]
        return rule

    def require_fits(self, adapter: Adapter) -> None:
        for m in self._members:
            m.require_fits(adapter)

    def _batch(self, adapters: list[Adapter] | Any) -> Any:
        from ..nets import FactorBatch, collate

        if isinstance(adapters, FactorBatch):
            return adapters
        return collate(adapters, self.spec, self.device, dtype=_model_dtype(self._members[0].model), check=False)

    def scores(self, adapters: list[Adapter] | Any) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for m, b in self._each(self._batch(adapters)):
            out.update(m.scores(b))
        return out

    def predict(self, adapters: list[Adapter] | Any) -> list[dict[str, dict[str, Any]]]:
        rows: list[dict[str, dict[str, Any]]] = []
        for m, b in self._each(self._batch(adapters)):
            for k, p in enumerate(m.predict(b)):
                if k == len(rows):
                    rows.append({})
                rows[k].update(p)
        return rows

    def _each(self, batch: Any) -> Any:
        """(member, the batch as that member alone would get it): the same factors, a fresh cache (a model
        may keep derived features there), so that each member's predictions are those of ``--model`` it."""
        from ..nets import FactorBatch
        from ..nets.svd import SPECTRA

        for m in self._members:
            own = FactorBatch(batch.spec, batch.groups, batch.sources, {})
            dtype = _model_dtype(m.model)
            if dtype != batch.dtype:  # members saved in other precisions: each reads its own
                own = own.to(dtype=dtype)
            yield m, own
            if SPECTRA in own.cache and SPECTRA not in batch.cache:  # the singular values, for the domain score
                batch.cache[SPECTRA] = own.cache[SPECTRA]

    def domain_rows(self, adapters: list[Adapter] | Any) -> list[dict[str, Any]] | None:
        """Per adapter ``{"score", "in_domain"}`` as one checkpoint reports it when every member with a
        domain reference says the same (checkpoints of one zoo share it); else the farthest score, in
        domain only where every member says so, and each member's answer under ``models``."""
        batch = self._batch(adapters)
        per = [(m.name, m.domain_rows(batch)) for m in self._members if m.domain is not None]
        if not per:
            return None
        out = []
        for k in range(len(per[0][1])):
            each = {name: rows[k] for name, rows in per}
            answers = list(each.values())
            if all(a == answers[0] for a in answers):
                out.append(dict(answers[0]))
            else:
                out.append({"score": max(a["score"] for a in answers), "in_domain": all(a["in_domain"] for a in answers),
                            "models": each})
        return out


def load_checkpoints(paths: list[str | Path], *, device: str | torch.device = "cpu") -> Checkpoint | CheckpointSet:
    """One checkpoint, or a `CheckpointSet` of several (same layer spec, no target name twice)."""
    loaded = [load_checkpoint(Path(p), device=device) for p in paths]
    return loaded[0] if len(loaded) == 1 else CheckpointSet(loaded)


def check_fits(adapter: Adapter, spec: Any, rule: dict[str, Any]) -> None:
    """`IncompatibleAdapter` (exit 4) naming what differs when `adapter` does not fit the layer spec
    (or, for the fixed-rank MLPs, the rank) of the checkpoint described by `rule`."""
    try:
        spec.require_fits(adapter)
        _check_declared_base(adapter, rule)
        rank = rule.get("rank")
        if rank is not None and max(adapter.ranks, default=0) > rank:
            raise IncompatibleAdapter(
                f"{rule['architecture']} reads modules of rank up to {rank} (smaller ranks are zero-padded); "
                f"this adapter has ranks {sorted(set(adapter.ranks))}",
                path=adapter.source or None,
            )
    except IncompatibleAdapter as exc:
        msg = str(exc)
        if exc.path and msg.startswith(f"{exc.path}: "):
            msg = msg[len(exc.path) + 2 :]
        from ..formats.family import FAMILY_NAMES, diffusion_family, diffusion_kind, diffusion_parts, guess_family

        family = guess_family(adapter)
        theirs = diffusion_kind(family)
        base = str(rule.get("base_model", ""))
        if theirs and family != base and theirs != diffusion_family(base):
            # plainly, instead of a list of unknown UNet modules: it is another kind of model altogether
            msg = (f"it is {'an' if theirs == 'sdxl' else 'a'} {FAMILY_NAMES.get(theirs, theirs)} {diffusion_parts(adapter.layers)} LoRA "
                   f"({len(adapter.layers)} modules), not a LoRA of this checkpoint's base model")
        raise IncompatibleAdapter(
            f"does not fit checkpoint {rule['name']!r} (base model {rule['base_model']}; the adapter looks like "
            f"{family}): {msg}",
            path=exc.path or adapter.source,
        ) from None


def _check_declared_base(adapter: Adapter, rule: dict[str, Any]) -> None:
    """Refuse when the base model a remote source declares (Civitai "SD 1.5", a model card's base_model)
    is another diffusion family than the checkpoint's, even if the layer shapes happen to fit."""
    from ..formats.family import diffusion_family

    declared = (adapter.metadata.get("source") or {}).get("base_model")
    if not isinstance(declared, str) or not declared:
        return
    ours, theirs = diffusion_family(str(rule.get("base_model", ""))), diffusion_family(declared)
    if ours and theirs and ours != theirs:
        raise IncompatibleAdapter(f"its source declares base model {declared!r} ({theirs}); the checkpoint is for {ours}",
                                  path=adapter.source or None)


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    import torch

    for p in model.parameters():
        return p.dtype
    return torch.float32


def load_checkpoint(model: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Resolve ``--model`` and load it, validating the card and the tensors against each other."""
    from ..nets import LayerSpec, build_model

    folder = resolve(str(model)) if not isinstance(model, Path) else model
    if not is_checkpoint(folder):
        raise CheckpointError(f"not a lolscan checkpoint (no {CARD_NAME})", path=folder)
    card = read_card(folder)
    card_path = folder / CARD_NAME
    try:
        spec = LayerSpec.from_json(card["layer_spec"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"card layer_spec is malformed: {exc}", path=card_path) from None
    targets = [Target.from_json(t) for t in card["targets"]]
    tensors, weights_name = read_weights(folder)  # one file or shards, each through the validating reader
    on_disk = {k: list(v.shape) for k, v in tensors.items()}
    if on_disk != card["tensors"]:
        raise CheckpointError(_tensor_diff(card["tensors"], on_disk, "card", weights_name), path=folder)
    def one(states: dict[str, Any] | None) -> Any:
        """One trained model: a net, or, with ``states``, each target served by the weights at its own best step."""
        if states is None:
            return build_model(card["architecture"], spec, int(card["out_dim"]), **card["hparams"])
        from ..nets import PerTargetNet

        serve = states["targets"]
        return PerTargetNet([one(None) for _ in range(states["count"])], [serve[t.name] for t in targets for _ in range(t.width)])

    try:
        if "ensemble" in card:  # models of several seeds, outputs averaged
            from ..nets import EnsembleNet

            net = EnsembleNet([one(s) for s in card["ensemble"]["states"]])
        else:
            net = one(card.get("states"))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot rebuild {card['architecture']} from the card: {exc}", path=card_path) from None
    expected = {k: list(v.shape) for k, v in net.state_dict().items()}
    if expected != on_disk:
        raise CheckpointError(_tensor_diff(expected, on_disk, "the architecture", weights_name), path=folder)
    net.load_state_dict(tensors, strict=True)
    net.to(device)
    net.eval()
    ckpt = Checkpoint(net, card, targets, spec, path=folder)
    if isinstance(card.get("domain"), dict):
        ckpt.extra["domain"] = _load_domain(folder, card["domain"], len(spec))
    return ckpt


def _load_domain(folder: Path, info: dict[str, Any], layers: int) -> Any:
    """The domain reference a card names, checked against the layer spec."""
    from ..evaluation.calibration import DOMAIN_FILE, Domain
    from ..formats.tensorfile import read_safetensors

    path = folder / str(info.get("file", DOMAIN_FILE))
    if path.name != str(info.get("file", DOMAIN_FILE)) or not path.is_file():
        raise CheckpointError(f"card names a domain file {info.get('file')!r} that is not in the folder", path=folder)
    tensors = read_safetensors(path).tensors
    try:
        dom = Domain.from_parts(tensors, info)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"domain reference is malformed: {exc}", path=path) from None
    if dom.ref.shape != (layers,) or dom.train.ndim != 2 or dom.train.shape[1] % layers or dom.train.shape[0] < 1:
        raise CheckpointError("domain reference does not match the layer spec", path=path)
    return dom


def _tensor_diff(a: dict[str, list[int]], b: dict[str, list[int]], a_name: str, b_name: str) -> str:
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    if only_a:
        return f"tensor {only_a[0]!r} is in {a_name} but not in {b_name}" + (f" (and {len(only_a) - 1} more)" if len(only_a) > 1 else "")
    if only_b:
        return f"tensor {only_b[0]!r} is in {b_name} but not in {a_name}" + (f" (and {len(only_b) - 1} more)" if len(only_b) > 1 else "")
    k = next(k for k in sorted(a) if a[k] != b[k])
    return f"tensor {k!r} is {a[k]} in {a_name} but {b[k]} in {b_name}"
