"""How many classes a LoRA learned, decoded from a classes run's stored test probabilities, and what bounds it (issue 18).

    python3 bench/count_decode.py CLASSES.json[.gz] [MORE_SEEDS.json …] ZOO/manifest.jsonl --summary \
        [--baseline N_CLASSES.json[.gz]] [--regression N_REG.json[.gz]]
    python3 bench/count_decode.py CLASSES.json[.gz] [MORE_SEEDS.json …] ZOO/manifest.jsonl [--baseline N_CLASSES.json[.gz]] \
        [--regression N_REG.json[.gz]] [--arch glnet] [--target 0.73] [--crossfit 5]

CLASSES.json: `bench/architectures.py ZOO/manifest.jsonl -t classes … --json CLASSES.json`; more runs of the same
split (say `--first-seed 5`) merge their seeds in. A joint run (`-t classes -t n_classes --kind n_classes=multiclass`)
works too: its n_classes head is scored beside the decoders. --baseline (optional): the `-t n_classes --kind
n_classes=multiclass` run of the same split; its hp-ridge / hp-gbt rows are what each decoder is set against
(`lolscan.evaluation.compare.paired_bootstrap`: seeds pooled, 95 % CI), and its metanetwork rows give the direct
multiclass count and the product of experts below; without it those are left out, and a line says so.
--regression (optional): a `-t n_classes` run without --kind (a regression on the count) of the same split; its
predictions rounded to the nearest count (1–10) are one more decoder, `reg-rounded`. Every run given must have
the classes run's test split.

--summary: only the short table, over every architecture of the classes run(s): the test accuracy at naming
`n_classes` by `called` and by `summed` (below), mean ± sd over that architecture's seeds, `called` set against the
baseline's hp rows; the regression run's rounded counts the same way, per architecture; and the most common
count's share (the prior). It reads only the manifest's `n_classes`.

Without --summary, for one architecture (--arch; it reads the manifest's `cls_*`, `n_classes` and `split`):
1. Decoders of the count K from the ten presence probabilities p_i: `called` (#{p_i ≥ 0.5}), `summed`
   (round Σ p_i, at least 1) and `pb-mode`, the Bayes decision under independent Bernoulli(p_i) (the Poisson-binomial
   mode, K ≥ 1 since no LoRA saw no class), with the model's own expected accuracy E[max_k P(K = k)] beside
   the realised one, a reliability table and the count NLL; `mc-head` / `poe`: the multiclass run's count,
   and the Poisson-binomial times its count distribution over the count prior (train + val), seed by seed;
   `ens-*`: the seeds' probabilities averaged (one ensemble, its size curve); `crossfitF` (--crossfit F): a
   logistic decoder of the sorted p, Σp and #called, fitted on F − 1 folds of the test LoRAs, read on the last.
2. Per-class accuracy, false-positive / false-negative rates and the class pairs whose errors go together;
   then the count accuracy a classes model would have (a) with independent errors at per-class accuracy a
   (exact, averaged over the test counts), (b) with the empirical per-class FP / FN rates scaled by s,
   drawn independently, and (c) with the k weakest classes made perfect in the stored predictions.
3. The count error as #FP − #FN, the per-class error rates by the true count, and every decoder's accuracy by it.
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics as st
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lolscan.evaluation.compare import bootstrap_indices, mean_metric, metric, paired_bootstrap, percentile_ci

K = 10  # Fashion-MNIST classes


def load(path: str) -> Any:
    raw = Path(path).read_bytes()
    return json.loads(gzip.decompress(raw) if path.endswith(".gz") else raw)


def poisson_binomial(p: np.ndarray) -> np.ndarray:
    """``(n, k + 1)``: P(K = j) for K the number of successes of independent Bernoulli(p[:, i])."""
    dist = np.zeros((len(p), p.shape[1] + 1))
    dist[:, 0] = 1.0
    for i in range(p.shape[1]):
        q = p[:, i:i + 1]
        dist = dist * (1 - q) + np.concatenate([np.zeros((len(p), 1)), dist[:, :-1]], axis=1) * q
    return dist


def at_least_one(dist: np.ndarray) -> np.ndarray:
    """A count distribution conditioned on K ≥ 1 (every LoRA saw some class)."""
    d = dist.copy()
    d[:, 0] = 0.0
    return d / d.sum(1, keepdims=True)


def indep_count_accuracy(a: float, counts: list[int]) -> float:
    """Exact-count accuracy of calls that err independently with probability 1 − a on every class:
    P(#FN = #FP), #FN ~ Bin(n, 1 − a), #FP ~ Bin(10 − n, 1 − a), averaged over the true counts n."""
    from math import comb

    e = 1.0 - a
    total = 0.0
    for n in counts:
        total += sum(comb(n, j) * e**j * a**(n - j) * comb(K - n, j) * e**j * a**(K - n - j) for j in range(min(n, K - n) + 1))
    return total / len(counts)


def solve(f: Any, goal: float, lo: float = 0.5, hi: float = 1.0) -> float:
    """The x in [lo, hi] with f(x) = goal, f increasing (bisection)."""
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < goal else (lo, mid)
    return (lo + hi) / 2


def called(p: np.ndarray) -> np.ndarray:
    """The classes called present, #{p_i ≥ 0.5}, per LoRA."""
    return (p >= 0.5).sum(1)


def summed(p: np.ndarray) -> np.ndarray:
    """The rounded sum of the presence probabilities, at least 1 (every LoRA saw some class), per LoRA."""
    return np.clip(np.rint(p.sum(1)), 1, K)


def rounded(run: dict, n: int) -> np.ndarray:
    """A regression run's count predictions for its ``n`` test LoRAs, rounded to the nearest count (1–10)."""
    return np.clip(np.rint(np.asarray(run["pred"]["n_classes"], dtype=float).reshape(n, -1)[:, 0]), 1, K).astype(int)


ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("classes_json", nargs="+", help="one or more runs of the same split (their seeds are merged)")
ap.add_argument("manifest")
ap.add_argument("--baseline", help="the n_classes multiclass run's JSON (hp-* rows, its multiclass heads); without it "
                                   "nothing is set against the recipe")
ap.add_argument("--regression", help="an n_classes regression run's JSON: its predictions rounded, one more decoder")
ap.add_argument("--summary", action="store_true",
                help="only the short table over every architecture: called, summed (and the regression rounded) "
                     "against the recipe, the most common count's share")
ap.add_argument("--arch", default="glnet", help="the classes run's architecture to study (default glnet; --summary reads them all)")
ap.add_argument("--target", type=float, default=0.73, help="the count accuracy to reach (the paper's 73 %%)")
ap.add_argument("--sims", type=int, default=200, help="Monte Carlo draws per test LoRA in (b)")
ap.add_argument("--crossfit", type=int, default=0, metavar="F",
                help="also a count decoder fitted on the probabilities (sorted p, Σp, #called → count; multinomial logistic "
                     "regression, scikit-learn), cross-fitted over F folds of the test LoRAs: each fold decoded by a fit on the others")
args = ap.parse_args()


def same_split(run: dict, what: str) -> None:
    if run["test_rows"] != d["test_rows"]:
        sys.exit(f"{what} has another test split")


d = load(args.classes_json[0])
for more in args.classes_json[1:]:  # more seeds of the same split (say --first-seed 5 runs)
    extra = load(more)
    same_split(extra, more)
    for name, more_runs in extra["runs"].items():
        d["runs"][name] = d["runs"].get(name, []) + more_runs
base = load(args.baseline) if args.baseline else None
reg = load(args.regression) if args.regression else None
rows = [json.loads(line) for line in open(args.manifest) if line.strip()]
for run, what in ((base, "the baseline run"), (reg, "the regression run")):
    if run is not None:
        same_split(run, what)
hp = {f"hp-{k}": np.asarray(v) for k, v in base["honest"]["hp"]["n_classes"]["models"].items()} if base else {}
sd = (lambda xs: st.stdev(xs) if len(xs) > 1 else 0.0)
NO_BASELINE = "no --baseline: the counts are not set against an n_classes run's recipe-only rows"


def summary() -> None:
    """--summary: every architecture's count accuracy by `called` and `summed` and the regression run's rounded
    count, each against the recipe-only rows when there is a baseline, then the most common count's share."""
    true = np.array([rows[i]["n_classes"] for i in d["test_rows"]])
    if base is not None:
        labels = next(t for t in base["targets"] if t["name"] == "n_classes")["labels"]
        index = {int(c): i for i, c in enumerate(labels)}  # a count to its class index (-1: no such class)
        true_idx = np.array([index[n] for n in true.tolist()], dtype=float)
    accs = (lambda counts: [float(np.mean(c == true)) for c in counts])

    def against_recipe(what: str, counts: list[np.ndarray]) -> None:
        """Each seed's counts against the n_classes run's recipe-only rows: the tables' paired bootstrap, seeds pooled."""
        for name, probs in hp.items():
            idx = [np.array([index.get(int(c), -1) for c in cs], dtype=float) for cs in counts]
            diff, lo, hi = paired_bootstrap("multiclass", true_idx, idx, [probs])
            print(f"  {what} − {name} ({metric('multiclass', true_idx, probs):.3f}): {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]")

    for arch, runs in (reg["runs"].items() if reg is not None else ()):
        counts = [rounded(r, len(true)) for r in runs]
        a = accs(counts)
        print(f"{arch} (regression on the count, rounded): {st.mean(a):.3f} ± {sd(a):.3f} ({len(runs)} seeds)")
        against_recipe("rounded", counts)
    for arch, runs in d["runs"].items():
        P = [np.asarray(r["pred"]["classes"]) for r in runs]
        a_called, a_summed = accs([called(p) for p in P]), accs([summed(p) for p in P])
        print(f"{arch}: classes called present {st.mean(a_called):.3f} ± {sd(a_called):.3f}, "
              f"rounded sum {st.mean(a_summed):.3f} ± {sd(a_summed):.3f} ({len(runs)} seeds, {len(true)} test LoRAs)")
        against_recipe("classes called present", [called(p) for p in P])
    print(f"most common count: {max(Counter(true.tolist()).values()) / len(true):.3f} of the test LoRAs")
    if base is None:
        print(f"({NO_BASELINE})")


if args.summary:
    summary()
    sys.exit()
if args.arch not in d["runs"]:
    sys.exit(f"the classes run has no {args.arch} rows (it has {', '.join(d['runs']) or 'none'}): say --arch")
if reg is not None and args.arch not in reg["runs"]:
    sys.exit(f"the regression run has no {args.arch} rows (it has {', '.join(reg['runs']) or 'none'})")
labels = next(t for t in d["targets"] if t["name"] == "classes")["labels"]
Y = np.array([[int(rows[i][f"cls_{c}"]) for c in labels] for i in d["test_rows"]])  # (n, 10) truth
true = Y.sum(1)
assert all(rows[i]["n_classes"] == n for i, n in zip(d["test_rows"], true))
if base is not None:
    n_labels = next(t for t in base["targets"] if t["name"] == "n_classes")["labels"]
    assert [int(c) for c in n_labels] == list(range(1, K + 1))
true_idx = (true - 1).astype(float)  # class index of the count in the n_classes run (1..10 → 0..9)
fitted = [r["n_classes"] for r in rows if r["split"] in ("train", "val")]
prior = np.array([sum(c == j for c in fitted) for j in range(1, K + 1)], dtype=float)
prior = (prior + 0.5) / (prior + 0.5).sum()  # the count prior the multiclass head learned (smoothed)
runs = d["runs"][args.arch]
P = [np.asarray(r["pred"]["classes"]) for r in runs]  # per seed (n, 10)
mc = {r["seed"]: np.asarray(r["pred"]["n_classes"]) for r in base["runs"].get(args.arch, [])} if base else {}
joint = [np.asarray(r["pred"]["n_classes"]) for r in runs if "n_classes" in r["pred"]]
acc = (lambda c: float(np.mean(np.asarray(c) == true)))
print(f"{args.arch}: {len(runs)} seeds, {len(true)} test LoRAs; count prior (test) "
      f"{dict(sorted(Counter(true.tolist()).items()))}; most common count {max(Counter(true.tolist()).values()) / len(true):.3f}")

# ---- 1. decoders ------------------------------------------------------------------------------
pb = [at_least_one(poisson_binomial(p))[:, 1:] for p in P]  # (n, 10): P(K = 1..10)
counts: dict[str, list[np.ndarray]] = {
    "called": [called(p) for p in P],
    "summed": [summed(p) for p in P],
    "pb-mode": [q.argmax(1) + 1 for q in pb]}
mc_ok = bool(mc) and all(r["seed"] in mc for r in runs)  # the multiclass run has every seed of this one
if mc_ok:
    poe = [q * mc[r["seed"]] / prior for q, r in zip(pb, runs)]
    counts["mc-head"] = [mc[r["seed"]].argmax(1) + 1 for r in runs]
    counts["poe"] = [(q / q.sum(1, keepdims=True)).argmax(1) + 1 for q in poe]
if joint:
    counts["joint-head"] = [j.argmax(1) + 1 for j in joint]
    counts["joint-poe"] = [(q * j / prior).argmax(1) + 1 for q, j in zip(pb, joint)]
if reg is not None:
    counts["reg-rounded"] = [rounded(r, len(true)) for r in reg["runs"][args.arch]]
rng0 = np.random.default_rng(1)
ens = np.mean(P, axis=0)  # the seeds' probabilities averaged: one ensemble model (len(P)× the training)
counts["ens-called"] = [(ens >= 0.5).sum(1)]
counts["ens-pb-mode"] = [at_least_one(poisson_binomial(ens))[:, 1:].argmax(1) + 1]
if args.crossfit:
    from sklearn.linear_model import LogisticRegression

    feats = [np.column_stack([np.sort(p, 1), p.sum(1), (p >= 0.5).sum(1)]) for p in P]
    fold = np.random.default_rng(0).permutation(len(true)) % args.crossfit  # by LoRA: its seeds stay in one fold
    out = [np.zeros(len(true), dtype=int) for _ in P]
    for f in range(args.crossfit):
        fit = fold != f
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(np.concatenate([x[fit] for x in feats]), np.tile(true[fit], len(P)))
        for o, x in zip(out, feats):
            o[~fit] = clf.predict(x[~fit])
    counts[f"crossfit{args.crossfit}"] = out
print("\n1. decoders (test accuracy at the exact count, mean ± sd over seeds [95 % CI over test LoRAs, seeds pooled]; "
      "paired bootstrap vs the recipe, seeds pooled)")
if base is None:
    print(f"  ({NO_BASELINE}; mc-head and poe are left out)")
boots_vs = {name: probs for name, probs in hp.items()}
boots = bootstrap_indices(len(true))
for name, cs in counts.items():
    a = [acc(c) for c in cs]
    near = st.mean(float((abs(c - true) <= 1).mean()) for c in cs)
    lo, hi = percentile_ci(mean_metric("multiclass", true_idx, [c - 1.0 for c in cs], boots))
    line = f"  {name:11s} {st.mean(a):.3f} ± {sd(a):.3f} [{lo:.3f}, {hi:.3f}] (±1: {near:.3f})"
    for hname, probs in boots_vs.items():
        diff, lo, hi = paired_bootstrap("multiclass", true_idx, [c - 1.0 for c in cs], [probs])
        line += f" | − {hname} ({metric('multiclass', true_idx, probs):.3f}) {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    print(line)
diff, lo, hi = paired_bootstrap("multiclass", true_idx, [c - 1.0 for c in counts["pb-mode"]], [c - 1.0 for c in counts["called"]])
print(f"  pb-mode − called: {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]")
if "poe" in counts:
    diff, lo, hi = paired_bootstrap("multiclass", true_idx, [c - 1.0 for c in counts["poe"]], [c - 1.0 for c in counts["pb-mode"]])
    print(f"  poe − pb-mode: {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]")
logit = [np.log(np.clip(p, 1e-7, 1 - 1e-7) / np.clip(1 - p, 1e-7, 1)) for p in P]
print("  pb-mode with the logits × f (f > 1 sharpens; f → ∞ is `called`; sensitivity only, read on test): " + ", ".join(
    f"f={f:g}: {st.mean(acc(at_least_one(poisson_binomial(1 / (1 + np.exp(-f * z))))[:, 1:].argmax(1) + 1) for z in logit):.3f}"
    for f in (0.5, 0.75, 1, 1.5, 2, 3, 5)))
curve = []
for k in range(1, len(P) + 1):  # the seed ensemble's called count by its size: mean over up to 50 random k-subsets
    subsets = {tuple(sorted(rng0.choice(len(P), k, replace=False))) for _ in range(200)}
    subsets = sorted(subsets)[:50]
    curve.append(f"{k}: {np.mean([acc((np.mean([P[i] for i in sub], 0) >= 0.5).sum(1)) for sub in subsets]):.3f}")
print(f"  ens-called by ensemble size (mean p of k seeds, p ≥ 0.5 counted): {', '.join(curve)}; the {len(P)}-seed ensemble's "
      f"per-class accuracy {float(((ens >= 0.5) == Y).mean()):.3f}, exact match {float(((ens >= 0.5) == Y).all(1).mean()):.3f}")
exp = [float(q.max(1).mean()) for q in pb]
got = [acc(c) for c in counts["pb-mode"]]
nll = [float(-np.log(np.maximum(q[np.arange(len(true)), true - 1], 1e-12)).mean()) for q in pb]
print(f"  pb-mode's own expected accuracy E[max P(K=k)] {st.mean(exp):.3f} ± {sd(exp):.3f} (realised {st.mean(got):.3f}; "
      f"per seed {', '.join(f'{e:.2f}/{g:.2f}' for e, g in zip(exp, got))})")
print(f"  count NLL: Poisson-binomial {st.mean(nll):.3f}; "
      + (f"hp-ridge {float(-np.log(np.maximum(hp['hp-ridge'][np.arange(len(true)), true - 1], 1e-12)).mean()):.3f}; "
         if "hp-ridge" in hp else "")
      + f"the count prior {float(-np.log(prior[true - 1]).mean()):.3f}"
      + (f"; mc-head {st.mean(float(-np.log(np.maximum(mc[r['seed']][np.arange(len(true)), true - 1], 1e-12)).mean()) for r in runs):.3f}" if mc_ok else ""))
conf = np.concatenate([q.max(1) for q in pb])
hit = np.concatenate([c == true for c in counts["pb-mode"]])
print("  reliability of pb-mode (seeds pooled): confidence bin → n, mean confidence, accuracy")
for lo_, hi_ in ((0, .3), (.3, .4), (.4, .5), (.5, .6), (.6, .7), (.7, .8), (.8, .9), (.9, 1.01)):
    m = (conf >= lo_) & (conf < hi_)
    if m.any():
        print(f"    [{lo_:.1f}, {min(hi_, 1):.1f}) n={int(m.sum()):4d}  conf {conf[m].mean():.3f}  acc {hit[m].mean():.3f}")
pl = np.concatenate([p.ravel() for p in P])
yl = np.tile(Y.ravel(), len(P))
bins = np.minimum((pl * 10).astype(int), 9)
ece = sum(abs(pl[bins == b].mean() - yl[bins == b].mean()) * (bins == b).mean() for b in range(10) if (bins == b).any())
print(f"  per-label calibration (10-bin ECE over all labels and seeds): {ece:.3f}; p ∈ (0.1, 0.9) on "
      f"{float(((pl > 0.1) & (pl < 0.9)).mean()):.3f} of the calls")

# ---- 2. per-class accuracy, confusions, what a 73 % count needs --------------------------------
C = [(p >= 0.5).astype(int) for p in P]
print("\n2. per class (mean over seeds): accuracy, FP rate (called | absent), FN rate (missed | present), mean p when present / absent")
cls_acc = np.mean([(c == Y).mean(0) for c in C], axis=0)
fp = np.mean([((c == 1) & (Y == 0)).sum(0) / (Y == 0).sum(0) for c in C], axis=0)
fn = np.mean([((c == 0) & (Y == 1)).sum(0) / (Y == 1).sum(0) for c in C], axis=0)
for j in np.argsort(cls_acc):
    pp = np.mean([p[Y[:, j] == 1, j].mean() for p in P])
    pa = np.mean([p[Y[:, j] == 0, j].mean() for p in P])
    print(f"  {labels[j]:12s} acc {cls_acc[j]:.3f}  FP {fp[j]:.3f}  FN {fn[j]:.3f}  p|present {pp:.2f}  p|absent {pa:.2f}")
print(f"  mean per-class accuracy {cls_acc.mean():.3f}; exact match (all ten right) "
      f"{st.mean(float((c == Y).all(1).mean()) for c in C):.3f}")
E_fp = np.concatenate([(c == 1) & (Y == 0) for c in C])  # (seeds·n, 10)
E_fn = np.concatenate([(c == 0) & (Y == 1) for c in C])
YY = np.tile(Y, (len(C), 1))
pairs = []
for j in range(K):  # class presence is drawn independently, so an error of j that rises with i's presence is a confusion
    for i in range(K):
        if i == j:
            continue
        for kind, E in (("FP", E_fp), ("FN", E_fn)):
            base_rows = YY[:, j] == (0 if kind == "FP" else 1)
            on, off = base_rows & (YY[:, i] == 1), base_rows & (YY[:, i] == 0)
            if on.sum() and off.sum():
                pairs.append((E[on, j].mean() - E[off, j].mean(), kind, labels[j], labels[i], E[on, j].mean(), E[off, j].mean()))
print("  errors of class j that rise with class i's presence (largest lifts; rate with i present vs absent; the mean lift over all "
      f"pairs, the count's own effect: FN {np.mean([x[0] for x in pairs if x[1] == 'FN']):+.3f}, "
      f"FP {np.mean([x[0] for x in pairs if x[1] == 'FP']):+.3f}):")
top = [x for which in ("FN", "FP") for x in sorted((x for x in pairs if x[1] == which), reverse=True)[:5]]
for lift, kind, cj, ci, r_on, r_off in top:
    print(f"    {kind} {cj:12s} | {ci:12s} present: {r_on:.3f} vs {r_off:.3f} ({lift:+.3f})")

tl = true.tolist()
grid = (0.85, 0.90, 0.904, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0)
print("  (a) independent errors at per-class accuracy a → count accuracy (test counts): "
      + ", ".join(f"{a:.3f}→{indep_count_accuracy(a, tl):.3f}" for a in grid))
print(f"      a for {args.target:.0%}: {solve(lambda a: indep_count_accuracy(a, tl), args.target):.4f}; a for GL-net's "
      f"realised called count {st.mean(acc(c) for c in counts['called']):.3f}: "
      f"{solve(lambda a: indep_count_accuracy(a, tl), st.mean(acc(c) for c in counts['called'])):.4f}; "
      f"at a = {cls_acc.mean():.3f} (GL-net's) it predicts {indep_count_accuracy(float(cls_acc.mean()), tl):.3f}")
rng = np.random.default_rng(0)


def scaled(s: float) -> tuple[float, float]:
    """(count accuracy, mean per-class accuracy) with each class's FP / FN rates times s, drawn independently."""
    Yr = np.repeat(Y, args.sims, axis=0)
    flip = rng.random(Yr.shape) < np.where(Yr == 1, fn * s, fp * s)
    Cr = np.where(flip, 1 - Yr, Yr)
    return float((Cr.sum(1) == Yr.sum(1)).mean()), float((Cr == Yr).mean())


print("  (b) the empirical per-class FP / FN rates × s, independent draws → count accuracy (mean per-class accuracy):")
print("      " + ", ".join(f"s={s:.2f}: {c:.3f} ({a:.3f})" for s in (1.0, 0.75, 0.5, 0.4, 0.3, 0.25, 0.2, 0.1, 0.0) for c, a in [scaled(s)]))
s73 = solve(lambda s: -scaled(s)[0], -args.target, 0.0, 1.0)
c73, a73 = scaled(s73)
print(f"      s for {args.target:.0%}: {s73:.3f} (count {c73:.3f}, mean per-class accuracy {a73:.3f}); at s = 1 the "
      f"independent model gives {scaled(1.0)[0]:.3f} vs the stored calls' {st.mean(acc(c) for c in counts['called']):.3f}")
print(f"  (c) the k weakest classes made perfect in the stored predictions → mean per-class acc, called, pb-mode; "
      f"then the same for the {len(P)}-seed ensemble (its own weakest first): per-class acc, called")
order = list(np.argsort(cls_acc))
ens_order = list(np.argsort(((ens >= 0.5) == Y).mean(0)))
for k in range(K + 1):
    fixed = order[:k]
    Pk = [p.copy() for p in P]
    for p in Pk:
        p[:, fixed] = Y[:, fixed]
    a_cls = np.mean([((p >= 0.5) == Y).mean() for p in Pk])
    called = st.mean(acc((p >= 0.5).sum(1)) for p in Pk)
    mode = st.mean(acc(at_least_one(poisson_binomial(p))[:, 1:].argmax(1) + 1) for p in Pk)
    e = ens.copy()
    e[:, ens_order[:k]] = Y[:, ens_order[:k]]
    print(f"      k={k:2d} ({', '.join(labels[j] for j in fixed[-1:]) or 'none':12s}) {a_cls:.3f}  {called:.3f}  {mode:.3f}   "
          f"ensemble ({', '.join(labels[j] for j in ens_order[:k][-1:]) or 'none':12s}) {float(((e >= 0.5) == Y).mean()):.3f}  "
          f"{acc((e >= 0.5).sum(1)):.3f}")

# ---- 3. where the count error comes from ------------------------------------------------------
err = np.concatenate([c - true for c in counts["called"]])
print("\n3. called − true count (seeds pooled): " + ", ".join(f"{e:+d}: {n / len(err):.3f}" for e, n in sorted(Counter(err.tolist()).items())))
nfp = np.concatenate([((c == 1) & (Y == 0)).sum(1) for c in C])
nfn = np.concatenate([((c == 0) & (Y == 1)).sum(1) for c in C])
print(f"  per LoRA: mean #FP {nfp.mean():.3f}, mean #FN {nfn.mean():.3f}; rows with errors that cancel (#FP = #FN > 0) "
      f"{float(((nfp == nfn) & (nfp > 0)).mean()):.3f}, with no error {float(((nfp == 0) & (nfn == 0)).mean()):.3f}")
tt = np.tile(true, len(C))
print("  per-class rates by true count: FN per present class, FP per absent class, mean p of present / absent classes")
for n in sorted(set(tl)):
    m = tt == n
    pp = np.concatenate([p[true == n] for p in P])
    yy = YY[m]
    print(f"   n={n}: FN {nfn[m].sum() / max(1, yy.sum()):.3f}  FP {nfp[m].sum() / max(1, (1 - yy).sum()):.3f}  "
          f"p|present {pp[yy == 1].mean() if (yy == 1).any() else float('nan'):.2f}  p|absent {pp[yy == 0].mean() if (yy == 0).any() else float('nan'):.2f}")
hp_counts = {name: [probs.argmax(1) + 1] for name, probs in hp.items()}
cols = {**counts, **hp_counts}
print("  by true count: n, mean #FP, mean #FN, then each decoder's accuracy")
print("   n  rows   #FP   #FN " + " ".join(f"{name:>10s}" for name in cols))
tt = np.tile(true, len(C))
for n in sorted(set(tl)):
    m = true == n
    line = f"  {n:2d} {int(m.sum()):5d} {nfp[tt == n].mean():5.2f} {nfn[tt == n].mean():5.2f} "
    line += " ".join(f"{st.mean(float((c[m] == n).mean()) for c in cs):10.3f}" for cs in cols.values())
    print(line)
