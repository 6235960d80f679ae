"""Labels for K adapters at once, through the same stacked forward used in training.

Each evaluation sequence is repeated K times (one copy per adapter slot), so one forward pass scores
the same text under all K adapters. With K = 1 and no adapter injected it evaluates the base model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import McRequest, iter_eval_units
from .multilora import decoder_and_head, hidden_states, lm_loss_per_row, pad_batch


@torch.no_grad()
def val_losses(model: nn.Module, k: int, val: dict[str, list[list[int]]], batch: int = 8
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-weighted mean next-token NLL over all held-out sequences, and per source; tensors of [K]."""
    dev = next(model.parameters()).device
    model.eval()
    items = [(src, ids) for src in val for ids in val[src]]
    sums = {src: torch.zeros(k, dtype=torch.float64) for src in val}
    counts = {src: torch.zeros(k, dtype=torch.float64) for src in val}
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        seqs = [ids for _ in range(k) for _, ids in chunk]
        ids, lengths = pad_batch(seqs)
        s, c = lm_loss_per_row(model, ids.to(dev), lengths)
        s, c = s.double().cpu().view(k, len(chunk)), c.double().cpu().view(k, len(chunk))
        for j, (src, _) in enumerate(chunk):
            sums[src] += s[:, j]
            counts[src] += c[:, j]
    total = sum(sums.values()) / sum(counts.values())
    return total.float(), {src: (sums[src] / counts[src]).float() for src in val}


@dataclass
class McResult:
    accuracy: torch.Tensor  # [K]
    gold_logprob: torch.Tensor  # [K] mean log-probability of the gold option, renormalised over options
    scores: torch.Tensor  # [K, docs, options] summed continuation log-likelihoods


@torch.no_grad()
def mc_accuracy(model: nn.Module, k: int, reqs: list[McRequest], batch: int = 8) -> McResult:
    """Multiple choice by log-likelihood of each option's continuation (lm-eval's ``acc``)."""
    dev = next(model.parameters()).device
    model.eval()
    _, head = decoder_and_head(model)
    n_opt = max(len(r.continuations) for r in reqs)
    scores = np.zeros((k, len(reqs), n_opt), dtype=np.float64)
    present = np.zeros((k, len(reqs), n_opt), dtype=bool)
    units = list(iter_eval_units(reqs))
    units.sort(key=lambda u: len(u[1]))  # similar lengths together: less padding
    for i in range(0, len(units), batch):
        chunk = units[i:i + batch]
        e = len(chunk)
        ids, lengths = pad_batch([u[1] for _ in range(k) for u in chunk])
        h = hidden_states(model, ids.to(dev))  # [k*e, T, d]
        rows, pos, tok, where = [], [], [], []
        for j, (di, seq, opts) in enumerate(chunk):
            for oi, cont in opts:
                for q, t in enumerate(cont):
                    p = len(seq) - len(cont) + q  # the position whose output predicts token t
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
    return McResult(accuracy=acc.float(), gold_logprob=glp.float(), scores=scores)
