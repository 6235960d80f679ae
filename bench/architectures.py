"""Train the five architectures on a labelled zoo; print the paper-style table (mean ± std over seeds).

The split is fixed (``--split-seed``); each seed re-initialises the model and reshuffles the
minibatches. Metrics are on the held-out test split. With ``--ensemble K`` each seed's row is one
`lolscan train --ensemble K` checkpoint whose members train at seeds seed·K … seed·K+K−1 (the settings
chosen at seed·K), so the rows share no member; the row is named ARCH-ensK unless ``--name`` says otherwise.

    python bench/architectures.py zoo/manifest.csv --target score --target style
    python bench/architectures.py --synthetic            # builds its own small labelled zoo
    python bench/architectures.py --from-json a.json b.json   # one table from runs saved by --json

``--json`` is rewritten after every run, so a run stopped part-way leaves the seeds it finished;
``--from-json`` merges such files (say one per architecture, run in parallel or on different devices).

After the mean ± std table comes, per target, the honest one (lolscan.evaluation.compare): every
architecture with its seeds pooled, and the hyperparameter-only baselines hp-ridge and hp-gbt (fitted
on the manifest's recipe columns — log10 lr, steps, batch size, dropout, weight decay, rank, alpha,
src_* — when it has an lr column; hp-gbt needs scikit-learn), with Kendall τ on the healthy test rows
(lr ≤ --healthy-lr, default the zoo's median lr: a cut on the recipe, not on the label) and the paired
bootstrap 95 % CI of (row − best row) over test adapters. --json saves what it needs; for runs saved
before it, give the zoo's JSONL manifest too: ``python bench/architectures.py MANIFEST --from-json …``.
``--refit`` trains every model again on train + validation once validation chose it, as `lolscan train --refit`
(rows named ARCH-refit). ``--test-where rank=8`` (repeatable) adds that table on the test rows whose manifest column holds one of
the values: with a split column that trains on ranks 2 and 4 and tests on both, rank generalisation.
``--kind n_classes=multiclass`` sets a target's kind as `lolscan train --kind` does (``--count
dataset_size=classes:7`` a count target as `lolscan train --count` does); ``--bins dataset_size=10``
replaces a numeric target column by 10 equal-width bins over its range in the manifest, a multiclass target
(the paper scores Imagenette-LoRA's dataset size as classes, its Table 4). Such runs keep their honest rows
in ``--json``; rebuilding them from a manifest (``--refit-baselines``) would read the unbinned column.

The synthetic zoo (``lolscan.training.write_synthetic_zoo``) has labels that are known functions of
ΔW: ``score`` = u*ᵀ ΔW₀ v* (linear), ``norm`` = ‖ΔW₀‖_F (quadratic), ``planted`` (a planted direction
in layer 1), ``dominant`` (argmax of three layer scores) and ``big`` (the set of layers with s > 0.5).
"""
from __future__ import annotations

import argparse
import gzip
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_experiments  # noqa: E402
from lolscan.evaluation.metrics import HEADLINE, METRIC_NAMES  # noqa: E402

SYNTHETIC_TARGETS = ["score", "norm", "planted", "dominant", "big"]
ARCH_ORDER = ["mlp", "mlp-oalign", "mlp-svd", "mlp-dense", "glnet"]


def mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def parse_hparams(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--hparam glnet:d=16`` (one architecture) or ``--hparam hidden=32`` (every one that takes it)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, _, value = item.partition("=")
        arch, colon, name = key.partition(":")
        if not colon:
            arch, name = "*", key
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(arch, {})[name] = parsed
    return out


def parse_pairs(items: list[str], flag: str) -> dict[str, str]:
    """``COL=VALUE`` items (repeatable flags) as a dict."""
    out: dict[str, str] = {}
    for item in items:
        col, eq, value = item.partition("=")
        if not col or not eq or not value:
            sys.exit(f"error: {flag} {item!r}: give COLUMN=VALUE")
        out[col] = value
    return out


def bin_column(manifest: Any, column: str, n: int) -> list[float]:
    """Replace a numeric manifest column by ``n`` equal-width bins over [min, max] of its values (every row,
    whatever its split: the range is the recipe's, e.g. dataset_size 4..64): bin k holds
    lo + k·w ≤ v < lo + (k+1)·w, w = (max − min)/n, the last bin its upper edge too. Labels
    ``"k:[a, b)"`` (k zero-padded, so that they sort in order; the last ``"k:[a, b]"``); missing values
    stay missing. Returns the n + 1 edges."""
    from lolscan.targets import is_missing, to_float

    if n < 2:
        sys.exit(f"error: --bins {column}={n}: give at least 2 bins")
    vals = [None if is_missing(r.labels.get(column)) else to_float(r.labels.get(column), column) for r in manifest.rows]
    present = [v for v in vals if v is not None]
    if not present or min(present) == max(present):
        sys.exit(f"error: --bins {column}: the column needs at least two distinct numbers")
    lo, hi = min(present), max(present)
    edges = [lo + k * (hi - lo) / n for k in range(n)] + [hi]
    width = len(str(n - 1))
    names = [f"{k:0{width}d}:[{edges[k]:g}, {edges[k + 1]:g}{']' if k == n - 1 else ')'}" for k in range(n)]
    for r, v in zip(manifest.rows, vals):
        if v is not None:
            r.labels[column] = names[min(n - 1, int((v - lo) / (hi - lo) * n))]
    return edges


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", nargs="?", type=Path, help="labelled manifest (CSV/JSONL)")
    ap.add_argument("--target", "-t", action="append", default=[], help="label column (repeatable)")
    ap.add_argument("--synthetic", action="store_true", help="build and use a small synthetic labelled zoo")
    ap.add_argument("--n", type=int, default=400, help="synthetic zoo size")
    ap.add_argument("--rank", type=int, default=4, help="synthetic zoo LoRA rank")
    ap.add_argument("--layers", type=int, default=4, help="synthetic zoo modules per adapter")
    ap.add_argument("--shape", type=int, nargs=2, default=(16, 12), metavar=("OUT", "IN"),
                    help="synthetic zoo module shape (e.g. 256 1536: Qwen2.5-1.5B's k/v projections)")
    ap.add_argument("--arch", action="append", default=[], help="architectures (default: all five)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds run from here (split one architecture's seeds over processes; merge with --from-json)")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--refit", action="store_true",
                    help="as `lolscan train --refit`: each model trained again on train + validation once validation chose it")
    ap.add_argument("--ensemble", type=int, default=1, metavar="K",
                    help="each seed's row is `lolscan train --ensemble K` at seed·K: members at seeds seed·K … seed·K+K−1, "
                         "so no two rows share a member (row name ARCH-ensK unless --name)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=lambda v: None if v == "auto" else float(v), default=1e-3,
                    help="a number, or auto: the learning-rate search `lolscan train` does by default")
    ap.add_argument("--patience", type=int, default=12)
    ap.add_argument("--hparam", action="append", default=[], help="KEY=VALUE or ARCH:KEY=VALUE")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (1 is often fastest here)")
    ap.add_argument("--json", type=Path, help="write all per-seed metrics here")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table instead of a text table")
    ap.add_argument("--from-json", nargs="+", type=Path, metavar="JSON", help="print the table from runs saved by --json (merged)")
    ap.add_argument("--name", help="row name for a single --arch (default: the architecture), e.g. glnet-asinh for a variant")
    ap.add_argument("--healthy-lr", type=float, help="Kendall τ on the test LoRAs with lr ≤ this (default: the zoo's median lr)")
    ap.add_argument("--bootstrap", type=int, default=2000, help="resamples of the paired bootstrap CIs")
    ap.add_argument("--refit-baselines", action="store_true",
                    help="with --from-json and MANIFEST: fit the hyperparameter-only rows again on the manifest's recipe columns")
    ap.add_argument("--kind", action="append", default=[], metavar="COL=KIND",
                    help="a target's kind (regression, binary, multiclass, multilabel), e.g. n_classes=multiclass")
    ap.add_argument("--count", action="append", default=[], metavar="COL=SOURCE:K",
                    help="make COL a count target, K × the labels of column SOURCE called present (lolscan train --count), "
                         "e.g. dataset_size=classes:7")
    ap.add_argument("--bins", action="append", default=[], metavar="COL=N",
                    help="score a numeric target as N equal-width bins over its range (a multiclass target)")
    ap.add_argument("--test-where", action="append", default=[], metavar="COLUMN=V[,V...]",
                    help="also the honest table on the test rows whose manifest COLUMN is one of the values (repeatable)")
    ap.add_argument("--search-margin", type=float, metavar="M",
                    help="an experiment: lolscan.training.search.SEARCH_MARGIN set to M for every run")
    ap.add_argument("--search-log", action="store_true",
                    help="an experiment: GL-net's search also tries the spectral head on log(σ/ref) last "
                         "(bench/search_experiments.py)")
    args = ap.parse_args()
    search_experiments.apply(args.search_margin, args.search_log)
    if args.from_json:
        merged = merge_saved(args.from_json)
        if args.manifest and ("honest" not in merged or args.refit_baselines):
            # runs saved before the honest rows, or a manifest that gained recipe columns: the rows from the manifest
            merged["honest"] = honest_from_manifest(args.manifest, merged)
        if args.json:
            write_json(args.json, merged)
        print_table(merged, args.markdown)
        print_honest(merged, args.markdown, args.healthy_lr, args.bootstrap)
        if args.test_where:
            if not args.manifest:
                ap.error("--test-where with --from-json needs the zoo's MANIFEST")
            labels = manifest_labels(args.manifest)
            for where in args.test_where:
                print_honest(restrict_test(merged, labels, where), args.markdown, args.healthy_lr, args.bootstrap)
        return

    import torch

    from lolscan.errors import LolscanError
    from lolscan.manifest import read_manifest
    from lolscan.targets import parse_count
    from lolscan.nets import ARCHITECTURES, hparam_names
    from lolscan.training import TrainOptions, prepare, run_safely, train, write_synthetic_zoo

    tmp = None
    if args.synthetic:
        tmp = tempfile.TemporaryDirectory(prefix="lolscan-arch-bench-")
        manifest = write_synthetic_zoo(tmp.name, n=args.n, layers=args.layers, shape=tuple(args.shape),
                                       rank=args.rank, seed=args.split_seed)
        targets = args.target or SYNTHETIC_TARGETS
    elif args.manifest:
        manifest, targets = args.manifest, args.target
        if not targets:
            ap.error("name at least one --target column")
    else:
        ap.error("give a MANIFEST or --synthetic")
    archs = args.arch or list(ARCHITECTURES)
    if args.ensemble < 1:
        ap.error("--ensemble K needs K ≥ 1")
    if args.name and len(archs) != 1:
        ap.error("--name needs exactly one --arch")
    hp_all = parse_hparams(args.hparam)
    kinds = parse_pairs(args.kind, "--kind")
    try:
        m = read_manifest(manifest)
        for col, n in parse_pairs(args.bins, "--bins").items():
            if col not in targets:
                ap.error(f"--bins {col}=…: {col!r} is not one of the --target columns")
            m.require_columns([col])
            edges = bin_column(m, col, int(n))
            kinds[col] = "multiclass"
            print(f"{col}: {n} bins, edges {', '.join(f'{e:g}' for e in edges)}", file=sys.stderr)
        counts = {col: parse_count(col, spec) for col, spec in parse_pairs(args.count, "--count").items()}
        ds = prepare(m, targets, kinds=kinds, counts=counts, seed=args.split_seed, progress=False)
    except LolscanError as exc:
        sys.exit(f"error: {exc}")
    sizes = {k: len(v) for k, v in ds.splits.items()}
    print(f"{len(ds.adapters)} adapters ({sizes['train']}/{sizes['val']}/{sizes['test']} train/val/test), "
          f"{len(ds.spec)} modules; targets: {', '.join(t.describe() for t in ds.targets)}", file=sys.stderr)

    cuda = torch.cuda.is_available() and args.device != "cpu"  # then each run records the current CUDA device's peak memory
    runs: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, str] = {}

    from lolscan import baseline

    honest = honest_payload(ds, baseline.fit(ds))

    def plain(t: Any) -> dict[str, Any]:
        """A target as its labels define it: one that `train` fitted on its log (a per-run choice, like its
        calibration) is written untransformed, so that runs of one zoo still merge (`same_targets`)."""
        if t.transform == "none":
            return t.to_json()
        from lolscan.training import set_transform

        c = copy.copy(t)
        set_transform(ds, c, "none")
        c.interval = None
        return c.to_json()

    def saved() -> dict[str, Any]:
        return {"splits": sizes, "targets": [plain(t) for t in ds.targets], "seeds": args.seeds, "device": args.device,
                "test_sources": [Path(ds.manifest.rows[i].source).name for i in ds.splits["test"]],
                "test_rows": list(ds.splits["test"]),  # manifest row indices (file names repeat in a diffusers zoo)
                "runs": runs, "skipped": skipped, "honest": honest}

    for arch in archs:
        hp = {k: v for k, v in hp_all.get("*", {}).items() if k in hparam_names(arch)} | hp_all.get(arch, {})
        row = args.name or (arch if args.ensemble == 1 else f"{arch}-ens{args.ensemble}") + ("-refit" if args.refit else "")
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            opts = TrainOptions(arch=arch, hparams=hp, seed=seed * args.ensemble, max_steps=args.steps, batch_size=args.batch_size,
                                lr=args.lr, patience=args.patience, device=args.device, progress=False, threads=args.threads,
                                ensemble=args.ensemble, refit=args.refit)
            t0 = time.perf_counter()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            try:
                result = run_safely(lambda: train(ds, opts))
            except LolscanError as exc:
                skipped[row] = str(exc)
                break
            pred = {t.name: baseline.model_scores(t, result.test_scores[t.name]).tolist() for t in ds.targets
                    if t.name in result.test_scores}  # for the paired bootstraps (regression: values; classes: probabilities)
            runs.setdefault(row, []).append({"seed": seed, "test": result.metrics.get("test", {}), "steps": result.steps,
                                              "best_step": result.best_step, "seconds": time.perf_counter() - t0,
                                              "pred": pred, "chosen": result.chosen, "tried": result.tried}
                                             | ({"ensemble": result.ensemble} if result.ensemble else {})
                                             | ({"refit": result.refit} if result.refit else {})
                                             | ({"peak_gib": torch.cuda.max_memory_allocated() / 2**30} if cuda else {}))
            print(f"  {row} seed {seed}: {time.perf_counter() - t0:.1f} s, best step {result.best_step}", file=sys.stderr)
            if args.json:
                write_json(args.json, saved())
    if args.json:
        write_json(args.json, saved())
    print_table(saved(), args.markdown)
    print_honest(saved(), args.markdown, args.healthy_lr, args.bootstrap)
    for where in args.test_where:
        print_honest(restrict_test(saved(), [r.labels for r in ds.manifest.rows], where), args.markdown, args.healthy_lr, args.bootstrap)
    if tmp is not None:
        tmp.cleanup()


def same_targets(a: list[dict[str, Any]], b: list[dict[str, Any]], rtol: float = 1e-6) -> bool:
    """Equal targets, their label statistics to ``rtol``: two builds of one zoo recipe reproduce the labels
    to about 1e-6, so their means differ in the last digits; another zoo's differ far more."""
    if len(a) != len(b):
        return False
    calibration = {"interval", "interval_level", "temperature"}  # fitted per run on validation: not the target's identity
    # the training labels' range: from the same labels as mean/std, and absent from runs saved before it was
    # recorded (or with --no-clamp), which still merge with those that have it
    derived = {"low", "high"}
    for x, y in zip(a, b):
        if x.keys() - derived != y.keys() - derived:
            return False
        for k in x.keys() - calibration - derived:
            u, v = x[k], y[k]
            if isinstance(u, float) and isinstance(v, (int, float)):
                if not math.isclose(u, v, rel_tol=rtol, abs_tol=1e-12):
                    return False
            elif u != v:
                return False
    return True


def honest_payload(ds: Any, hp: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the honest table needs besides the runs, saved with them: per target the labelled test rows
    (positions in the test split) and their truth, the test rows' lr, the zoo's median lr (the default
    healthy cut) and the hyperparameter-only baselines' test predictions (`lolscan.baseline.fit`)."""
    from lolscan import baseline
    from lolscan.evaluation.compare import default_healthy_lr

    test = ds.splits["test"]
    lrs = None
    if "lr" in ds.manifest.columns:
        lrs = [r.labels.get("lr") for r in ds.manifest.rows]
        lrs = [float(v) if v not in (None, "") else None for v in lrs]
    out: dict[str, Any] = {"targets": {}, "hp": {}, "test_lr": None if lrs is None else [lrs[i] for i in test],
                           "healthy_lr": None if lrs is None else default_healthy_lr([v for v in lrs if v is not None])}
    for t in ds.targets:
        pos = [k for k, i in enumerate(test) if not t.missing(ds.values[t.name][i])]
        out["targets"][t.name] = {"positions": pos, "true": baseline.truth(t, [ds.values[t.name][test[k]] for k in pos]).tolist()}
        b = hp.get(t.name, {})
        out["hp"][t.name] = ({"none": b["none"]} if "none" in b else
                             {"features": b["features"], "models": {m: v.tolist() for m, v in b["models"].items()}})
    return out


def honest_from_manifest(manifest: Path, saved: dict[str, Any]) -> dict[str, Any]:
    """`honest_payload` for runs saved without it: the test rows are found in MANIFEST by name (its path's
    file name, as ``test_sources`` holds them), the training rows by its ``split`` column."""
    from types import SimpleNamespace

    from lolscan.manifest import ManifestRow
    from lolscan.targets import Target

    recs = jsonl_records(manifest)
    if not recs or "split" not in recs[0]:
        sys.exit(f"error: {manifest}: needs a JSONL manifest with a split column to rebuild the honest rows")
    by_name = {Path(r.get("path") or r.get("uri") or r["id"]).name: k for k, r in enumerate(recs)}
    try:  # row indices where saved (a diffusers zoo's file names repeat), else file names
        test = list(saved["test_rows"]) if saved.get("test_rows") else [by_name[n] for n in saved["test_sources"]]
    except KeyError as exc:
        sys.exit(f"error: {manifest}: no row for test adapter {exc}")
    targets = [Target.from_json(t) for t in saved["targets"]]
    columns = list(dict.fromkeys(k for r in recs for k in r if k not in ("path", "uri", "split", "group")))
    rows = [ManifestRow(source=str(r.get("path")), labels={k: v for k, v in r.items() if k in columns}, split=r["split"]) for r in recs]
    splits = {s: [k for k, r in enumerate(recs) if r["split"] == s] for s in ("train", "val")} | {"test": test}
    ds = SimpleNamespace(manifest=SimpleNamespace(columns=columns, rows=rows), targets=targets, splits=splits,
                         values={t.name: [r.get(t.column) for r in recs] for t in targets})  # a count reads its source
    from lolscan import baseline

    return honest_payload(ds, baseline.fit(ds))


def jsonl_records(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL manifest, gzipped (as bench/results keeps them) or not."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def manifest_labels(path: Path) -> list[dict[str, Any]]:
    """Every row's labels, in order (a gzipped JSONL manifest too, as bench/results keeps them)."""
    from lolscan.manifest import RESERVED, read_manifest

    if path.suffix != ".gz":
        return [r.labels for r in read_manifest(path).rows]
    return [{k: v for k, v in r.items() if k not in RESERVED} for r in jsonl_records(path)]


def _matches(value: Any, wanted: list[str]) -> bool:
    for w in wanted:
        if str(value) == w:
            return True
        try:
            if float(value) == float(w):  # rank 8 matches "8" and "8.0"
                return True
        except (TypeError, ValueError):
            pass
    return False


def restrict_test(saved: dict[str, Any], labels: list[dict[str, Any]], where: str) -> dict[str, Any]:
    """``saved`` with its honest rows cut to the test adapters whose manifest column holds one of the values
    of ``where`` (``COLUMN=V[,V...]``; ``labels``: the manifest rows' labels, in order). The runs' predictions
    stay whole: the honest table reads them at the kept test positions."""
    col, eq, vals = where.partition("=")
    if not col or not eq or not vals:
        sys.exit(f"error: --test-where {where!r}: give COLUMN=VALUE[,VALUE...]")
    if "test_rows" not in saved or "honest" not in saved:
        sys.exit("error: --test-where needs runs saved with their test rows (test_rows, honest): rerun them")
    keep = {k for k, i in enumerate(saved["test_rows"]) if _matches(labels[i].get(col), vals.split(","))}
    if not keep:
        sys.exit(f"error: --test-where {where}: no test adapter matches")
    honest = copy.deepcopy(saved["honest"])
    for name, info in honest["targets"].items():
        js = [j for j, p in enumerate(info["positions"]) if p in keep]
        info["positions"], info["true"] = [info["positions"][j] for j in js], [info["true"][j] for j in js]
        models = honest["hp"].get(name, {}).get("models", {})
        for m, pred in models.items():  # fitted on the labelled test rows only, in their order
            models[m] = [pred[j] for j in js]
    return {**saved, "honest": honest, "where": where}


def print_honest(saved: dict[str, Any], markdown: bool, healthy_lr: float | None, reps: int) -> None:
    """Per target, the table a skeptical reviewer asks for: every architecture (its seeds pooled) and the
    hyperparameter-only baselines, with the test metric (mean ± sd over seeds), Kendall τ on the healthy
    test rows (lr ≤ the cut: the recipe's healthy range, not a cut on the label) and the paired bootstrap
    95 % CI of (row − best row) over test adapters."""
    import numpy as np

    from lolscan.baseline import BASELINE_ROWS
    from lolscan.evaluation.compare import compare_rows, healthy_rows
    from lolscan.evaluation.metrics import METRIC_NAMES
    from lolscan.targets import Target

    honest = saved.get("honest")
    if not honest:
        print("\n(no honest rows: these runs were saved without them; pass the zoo's MANIFEST with --from-json to rebuild them)")
        return
    cut = healthy_lr if healthy_lr is not None else honest.get("healthy_lr")
    for t in (Target.from_json(x) for x in saved["targets"]):
        info, b = honest["targets"][t.name], honest["hp"].get(t.name, {})
        pos, true = info["positions"], info["true"]
        runs = {arch: [np.asarray(r["pred"][t.name])[pos] for r in rs] for arch, rs in saved["runs"].items()
                if rs and all(t.name in r.get("pred", {}) for r in rs)}
        for model, pred in b.get("models", {}).items():
            runs[BASELINE_ROWS[model]] = [np.asarray(pred)]
        lrs = honest.get("test_lr")
        healthy = healthy_rows([lrs[k] for k in pos], cut) if lrs is not None and cut is not None and t.kind == "regression" else None
        stats, best = compare_rows(t.kind, true, runs, healthy=healthy, reps=reps)
        if best is None:
            continue
        name = METRIC_NAMES[stats[best]["metric"]]
        head = ["row", f"{t.name} test {name}"] + ([f"Kendall τ (lr ≤ {cut:.2g}, {len(healthy)} LoRAs)"] if healthy is not None else []) \
            + ["seeds", f"row − {best} [95 % CI]"]
        lines = []
        for row, st in sorted(stats.items(), key=lambda kv: -kv[1]["mean"] if not math.isnan(kv[1]["mean"]) else math.inf):
            ci = "best row" if row == best else f"{st['diff']:+.3f} [{st['ci95'][0]:+.3f}, {st['ci95'][1]:+.3f}]"
            lines.append([row, f"{st['mean']:.3f} ± {st['sd']:.3f}"] + ([f"{st['tau_healthy']:.3f}"] if healthy is not None else [])
                         + [str(st["seeds"]), ci])
        if "none" in b:
            note = f"no hyperparameter-only baseline: {b['none']}"
        else:
            note = (f"hp-*: hyperparameter-only baselines on {', '.join(b['features'])} (log10 lr; ridge on a cubic in log lr, "
                    f"gbt: gradient-boosted trees{'' if 'gbt' in b['models'] else ' — not fitted: scikit-learn is not installed'}); "
                    f"CIs: paired bootstrap over {len(true)} test adapters, {reps} resamples, seeds pooled")
        title = f"{t.name}: every row against the best row ({len(true)} test adapters" + \
            (f" with {saved['where']})" if saved.get("where") else ")")
        if markdown:
            print(f"\n**{title}**\n\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
            for line in lines:
                print("| " + " | ".join(line) + " |")
            print(f"\n{note}")
            continue
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, caption=note, caption_justify="left")
        for h in head:
            table.add_column(h, justify="left" if h == "row" else "right")
        for line in lines:
            table.add_row(*line)
        Console(width=max(120, 24 * len(head))).print(table)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` to ``path``, gzipped when the name ends in .gz (as `merge_saved` reads it)."""
    text = json.dumps(data, indent=2)
    path.write_bytes(gzip.compress(text.encode(), 6)) if path.suffix == ".gz" else path.write_text(text)


def merge_saved(paths: list[Path]) -> dict[str, Any]:
    """Runs saved by several ``--json`` files, as one; they must share the split and the targets (label
    statistics equal to 1e-6, so runs on a rebuilt zoo that reproduces the labels merge too)."""
    merged: dict[str, Any] | None = None
    for path in paths:
        d = json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_text())
        if merged is None:
            merged = {**d, "runs": {}, "skipped": {}}
        elif d["splits"] != merged["splits"] or not same_targets(d["targets"], merged["targets"]):
            sys.exit(f"error: {path}: another split or other targets than {paths[0]}")
        for arch, rs in d["runs"].items():
            have = {r["seed"] for r in merged["runs"].get(arch, [])}
            if have & {r["seed"] for r in rs}:
                sys.exit(f"error: {path}: {arch} seed(s) {sorted(have & {r['seed'] for r in rs})} are already in an earlier file")
            merged["runs"].setdefault(arch, []).extend(rs)
        merged["skipped"].update(d.get("skipped", {}))
        if "honest" not in merged and "honest" in d:
            merged["honest"] = d["honest"]
    assert merged is not None
    return merged


def print_table(saved: dict[str, Any], markdown: bool) -> None:
    from lolscan.targets import Target

    targets = [Target.from_json(t) for t in saved["targets"]]
    runs, skipped = saved["runs"], saved["skipped"]
    cols = [(t, m) for t in targets for m in HEADLINE[t.kind]]
    header = ["architecture"] + [f"{t.name} {METRIC_NAMES[m]}" for t, m in cols] + ["seeds", "s / run"]
    lines = []
    for arch in [a for a in ARCH_ORDER if a in runs or a in skipped] + [a for a in runs if a not in ARCH_ORDER]:
        if arch in skipped and arch not in runs:
            lines.append([arch] + ["n/a"] * len(cols) + ["0", f"skipped: {skipped[arch]}"])
            continue
        cells = [arch]
        for t, m in cols:
            mu, sd = mean_std([r["test"].get(t.name, {}).get(m) for r in runs[arch]])
            cells.append("n/a" if math.isnan(mu) else f"{mu:.3f} ± {sd:.3f}")
        cells.append(str(len(runs[arch])))
        cells.append(f"{statistics.fmean(r['seconds'] for r in runs[arch]):.1f}")
        lines.append(cells)
    title = f"test-split metrics, mean ± std over seeds ({saved['splits']['test']} test adapters)"
    if markdown:
        print(f"**{title}**\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for cells in lines:
            print("| " + " | ".join(cells) + " |")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="left" if h == "architecture" else "right")
    for cells in lines:
        table.add_row(*cells)
    Console(width=max(120, 16 * len(header))).print(table)


if __name__ == "__main__":
    main()
