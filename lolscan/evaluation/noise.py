"""How much of a label's variance is measurement noise, and the R² ceiling that leaves.

An accuracy measured on N questions is a noisy reading of the adapter's accuracy on the question
distribution. If a predictor knew every adapter's true accuracy exactly, its R² against the noisy labels
would be ``1 - noise variance / label variance`` — no metanetwork can beat that on average. Three ways to
estimate the noise variance:

- `binomial_r2_ceiling`: each label is a binomial proportion, so its noise variance is p(1-p)/N, estimated
  without bias by p̂(1-p̂)/(N-1) and averaged over adapters (needs only the accuracies and N);
- `bootstrap_r2_ceiling`: resample the questions (the same resample for every adapter) from per-question
  correctness, which a zoo stores with ``[data] store_correct = true`` (`pack_correct`);
- `repeat_r2_ceiling`: the same adapters labelled twice (another seed, another question sample):
  half the variance of the differences.

Which to trust: the binomial and per-adapter bootstrap estimates treat every adapter's errors as
independent. LoRAs near one base model get mostly the same questions right, so most of that noise is shared
and does not reorder them: in the Qwen -lite zoo the healthy LoRAs' ARC-C spread is 0.003-0.009 while the
binomial sd at 250 questions is 0.03. There ``ceiling_shared`` (resampled questions, each adapter against the
mean of all in the same resample) or a retest is the ceiling that applies; the binomial one is then far too pessimistic.

numpy only.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def pack_correct(correct: Any) -> str:
    """Per-question correctness (bool, one per question, in request order) as a hex string, 1 bit a question."""
    bits = np.asarray(correct, dtype=bool).ravel()
    return np.packbits(bits, bitorder="big").tobytes().hex()


def unpack_correct(text: str, n: int) -> np.ndarray:
    """The inverse of `pack_correct` for ``n`` questions."""
    raw = np.frombuffer(bytes.fromhex(text), dtype=np.uint8)
    if raw.size != (n + 7) // 8:
        raise ValueError(f"a correctness string of {raw.size} bytes does not hold {n} questions")
    return np.unpackbits(raw, bitorder="big")[:n].astype(bool)


def _ceiling(noise_var: float, label_var: float) -> float:
    return float(1.0 - noise_var / label_var) if label_var > 0 else float("nan")


def binomial_r2_ceiling(acc: Any, n_questions: int) -> dict[str, float]:
    """R² ceiling of accuracies ``acc`` (one per adapter) each measured on ``n_questions`` questions."""
    p = np.asarray(acc, dtype=np.float64)
    p = p[np.isfinite(p)]
    if p.size < 2 or n_questions < 2:
        raise ValueError("need at least two finite accuracies and two questions")
    noise = float(np.mean(p * (1 - p) / (n_questions - 1)))
    label = float(np.var(p, ddof=1))
    return {"noise_var": noise, "label_var": label, "noise_sd": noise ** 0.5, "ceiling": _ceiling(noise, label),
            "n": int(p.size), "n_questions": int(n_questions)}


def bootstrap_r2_ceiling(correct: Any, n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """R² ceiling from per-question correctness, ``correct`` [adapters, questions] (bool or 0/1).

    Each bootstrap draws N questions with replacement, the same for every adapter, and recomputes every
    accuracy. ``ceiling``: the noise variance is each adapter's variance over resamples, averaged (the
    binomial estimate's plug-in counterpart). ``ceiling_shared``: the variance of each adapter's accuracy
    relative to the mean over adapters in the same resample, since a harder or easier draw of questions moves
    every adapter together and that shift costs no R² when labels and predictions are compared within
    one question set."""
    c = np.asarray(correct, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 2 or c.shape[1] < 2:
        raise ValueError("correct must be [adapters >= 2, questions >= 2]")
    n_ad, n_q = c.shape
    rng = np.random.default_rng(seed)
    acc = c.mean(1)
    boot = np.empty((n_boot, n_ad))
    for b in range(n_boot):
        counts = np.bincount(rng.integers(0, n_q, n_q), minlength=n_q)
        boot[b] = c @ counts / n_q
    label = float(np.var(acc, ddof=1))
    noise = float(np.mean(np.var(boot, axis=0, ddof=1)))
    rel = boot - boot.mean(1, keepdims=True)
    noise_shared = float(np.mean(np.var(rel, axis=0, ddof=1)))
    return {"noise_var": noise, "label_var": label, "ceiling": _ceiling(noise, label),
            "noise_var_shared": noise_shared, "ceiling_shared": _ceiling(noise_shared, label),
            "n": int(n_ad), "n_questions": int(n_q), "n_boot": int(n_boot)}


def repeat_r2_ceiling(first: Any, second: Any) -> dict[str, float]:
    """R² ceiling from the same adapters labelled twice with independent noise: the noise variance of one
    labelling is half the variance of the differences. The label variance is each labelling's own,
    averaged: an offset the second labelling gives every adapter alike (other sampling seeds, say) is
    neither noise nor spread within one zoo's labels."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 2:
        raise ValueError("need at least two adapters labelled twice")
    noise = float(np.var(a - b, ddof=1) / 2)
    label = float((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
    return {"noise_var": noise, "label_var": label, "ceiling": _ceiling(noise, label), "n": int(a.size),
            "retest_r": float(np.corrcoef(a, b)[0, 1])}


def halves_r2_ceiling(per_seed: Any) -> dict[str, float]:
    """R² ceiling of a label that is the mean of S ≥ 2 per-seed measurements ([adapters, S]: a CLIP score's
    ``clip_score_s<k>`` columns), from its own halves: the first and second half of the seeds are two
    labellings with independent sampling noise (`repeat_r2_ceiling`; an odd S leaves the middle seed out of
    both), and the full label, the mean over all S seeds, has h/S of a half's noise variance (h seeds a half,
    the same noise at every seed). No adapter is labelled twice; training noise (the same recipe retrained)
    is not part of it."""
    x = np.asarray(per_seed, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError("need per-seed labels of at least two seeds")
    x = x[np.isfinite(x).all(axis=1)]
    h = x.shape[1] // 2
    half = repeat_r2_ceiling(x[:, :h].mean(axis=1), x[:, -h:].mean(axis=1))
    noise = half["noise_var"] * h / x.shape[1]
    label = float(np.var(x.mean(axis=1), ddof=1))
    return {"noise_var": noise, "label_var": label, "ceiling": _ceiling(noise, label), "n": half["n"],
            "seeds": int(x.shape[1]), "half_r": half["retest_r"]}
