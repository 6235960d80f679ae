"""Labels for K adapters at once, through the same stacked forward used in training.

Each evaluation sequence is repeated K times (one copy per adapter slot), so one forward pass scores
the same text under all K adapters. With K = 1 and no adapter injected it evaluates the base model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import McRequest, iter_eval_units
from .multilora import decoder_and_head, hidden_states, pack_rows, packed_nll, pad_batch


def fill_rows(lengths: list[int], cap: int) -> list[list[int]]:
    """Indices grouped, in order, into rows of at most `cap` tokens (a longer item gets a row alone)."""
    rows: list[list[int]] = []
    used = cap
    for i, n in enumerate(lengths):
        if used + n > cap:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


@torch.no_grad()
def val_losses(model: nn.Module, k: int, val: dict[str, list[list[int]]], batch: int = 8, row_tokens: int = 512
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-weighted mean next-token NLL over all held-out sequences, and per source; tensors of [K].

    Sequences are packed end to end into rows of about `row_tokens` (block-diagonal attention), so short
    ones are not padded to the longest; each adapter slot gets its own copy of the rows."""
    model.eval()
    items = [(src, ids) for src in val for ids in val[src]]
    sums = {src: torch.zeros(k, dtype=torch.float64) for src in val}
    counts = {src: torch.zeros(k, dtype=torch.float64) for src in val}
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        groups = fill_rows([len(ids) for _, ids in chunk], row_tokens)
        rows = [[chunk[j][1] for j in g] for _ in range(k) for g in groups]
        s, c = packed_nll(model, pack_rows(rows))
        s, c = s.double().cpu().view(k, len(chunk)), c.double().cpu().view(k, len(chunk))
        for col, j in enumerate(j for g in groups for j in g):
            src = chunk[j][0]
            sums[src] += s[:, col]
            counts[src] += c[:, col]
    total = sum(sums.values()) / sum(counts.values())
    return total.float(), {src: (sums[src] / counts[src]).float() for src in val}


@dataclass
class McResult:  # (gold: [docs] the gold option of each document)
    accuracy: torch.Tensor  # [K]
    gold_logprob: torch.Tensor  # [K] mean log-probability of the gold option, renormalised over options
    scores: torch.Tensor  # [K, docs, options] summed continuation log-likelihoods
    gold: torch.Tensor  # [docs] each document's gold option
    chars: torch.Tensor | None = None  # [docs, options] continuation lengths in characters, where known

    def correct(self, metric: str = "acc") -> torch.Tensor:
        """[K, docs] bool: did each adapter rank the gold option first — by summed log-likelihood ("acc",
        ``accuracy`` is its mean) or by log-likelihood per character ("acc_per_char", OLMES's RC metric)."""
        scores = self.scores
        if metric == "acc_per_char":
            if self.chars is None:
                raise ValueError("acc_per_char needs the continuations' lengths in characters")
            scores = scores / self.chars.clamp(min=1).unsqueeze(0)
        return scores.argmax(-1) == self.gold.unsqueeze(0)

    def metric(self, name: str = "acc") -> torch.Tensor:
        """[K] the accuracy by `correct`'s rule."""
        return self.correct(name).double().mean(1).float()


def common_prefix(seqs: list[list[int]]) -> int:
    """Length of the token prefix that every sequence starts with."""
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


def _cache_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


class _SharedPrefix:
    """Keys and values of a context prefix that every request shares (a few-shot block), computed once
    per adapter and replayed for every batch, so each question costs only its own tokens."""

    def __init__(self, model: nn.Module, k: int, prefix: list[int]):
        body, _ = decoder_and_head(model)
        dev = next(model.parameters()).device
        ids = torch.tensor([prefix] * k, device=dev)  # one row per adapter slot
        out = body(input_ids=ids, use_cache=True)
        self.kv = [(a.detach(), b.detach()) for a, b in _cache_tensors(out.past_key_values)]
        self.length = len(prefix)

    def cache(self, e: int) -> Any:
        """A fresh cache for a batch laid out adapter-major with e rows per adapter."""
        from transformers import DynamicCache

        c = DynamicCache()
        for i, (a, b) in enumerate(self.kv):
            c.update(a.repeat_interleave(e, dim=0), b.repeat_interleave(e, dim=0), i)
        return c


@torch.no_grad()
def mc_accuracy(model: nn.Module, k: int, reqs: list[McRequest], batch: int = 8,
                min_shared_prefix: int = 16) -> McResult:
    """Multiple choice by log-likelihood of each option's continuation (lm-eval's ``acc``).

    A token prefix shared by every request (at least ``min_shared_prefix`` tokens, e.g. the same
    five worked examples in front of every ARC question) is run once and reused from the KV cache.
    """
    dev = next(model.parameters()).device
    model.eval()
    body, head = decoder_and_head(model)
    n_opt = max(len(r.continuations) for r in reqs)
    scores = np.zeros((k, len(reqs), n_opt), dtype=np.float64)
    present = np.zeros((k, len(reqs), n_opt), dtype=bool)
    units = list(iter_eval_units(reqs))
    units.sort(key=lambda u: len(u[1]))  # similar lengths together: less padding
    seqs = [u[1] for u in units]
    # keep at least one token of every sequence out of the prefix: its output is read
    n_pre = min(common_prefix(seqs), min(len(s) for s in seqs) - 1)
    shared = _SharedPrefix(model, k, seqs[0][:n_pre]) if n_pre >= min_shared_prefix else None
    off = shared.length if shared else 0
    for i in range(0, len(units), batch):
        chunk = units[i:i + batch]
        e = len(chunk)
        ids, lengths = pad_batch([u[1][off:] for _ in range(k) for u in chunk])
        if shared is None:
            h = hidden_states(model, ids.to(dev))  # [k*e, T, d]
        else:
            h = body(input_ids=ids.to(dev), past_key_values=shared.cache(e), use_cache=True).last_hidden_state
        rows, pos, tok, where = [], [], [], []
        for j, (di, seq, opts) in enumerate(chunk):
            for oi, cont in opts:
                for q, t in enumerate(cont):
                    p = len(seq) - len(cont) + q - off  # the position whose output predicts token t
                    rows.append(j)
                    pos.append(p)
                    tok.append(t)
                    where.append((di, oi))
        n = len(rows)
        slot_rows = torch.tensor(rows, device=dev).unsqueeze(0) + e * torch.arange(k, device=dev).unsqueeze(1)
        pos_t = torch.tensor(pos, device=dev).expand(k, n)
        logp = torch.log_softmax(head(h[slot_rows, pos_t]).float(), dim=-1)  # [k, n, V]
        tok_t = torch.tensor(tok, device=dev).view(1, n, 1).expand(k, n, 1)
        lp = logp.gather(2, tok_t).squeeze(2).double().cpu().numpy()  # [k, n]
        w = np.array(where)
        for slot in range(k):
            np.add.at(scores[slot], (w[:, 0], w[:, 1]), lp[slot])
        present[:, w[:, 0], w[:, 1]] = True
    scores_t = torch.from_numpy(np.where(present, scores, -np.inf))
    gold = torch.tensor([r.gold for r in reqs])
    scores = scores_t
    acc = (scores.argmax(-1) == gold.unsqueeze(0)).double().mean(1)
    norm = torch.log_softmax(scores, dim=-1)
    glp = norm.gather(2, gold.view(1, -1, 1).expand(k, -1, 1)).squeeze(2).mean(1)
    chars = None
    if all(r.chars is not None for r in reqs):
        chars = torch.ones(len(reqs), n_opt, dtype=torch.float64)
        for i, r in enumerate(reqs):
            chars[i, : len(r.chars)] = torch.tensor(r.chars, dtype=torch.float64)
    return McResult(accuracy=acc.float(), gold_logprob=glp.float(), scores=scores, gold=gold, chars=chars)
