"""K LoRA adapters on one frozen base model, trained at once.

Every targeted ``nn.Linear`` is wrapped by `MultiLoRALinear`, which holds K stacked factor pairs
``A: [K, r, in]``, ``B: [K, out, r]``. The batch is laid out adapter-major: rows ``k*b … (k+1)*b-1``
belong to adapter k, so the low-rank path is two batched matmuls over ``[K, b·T, ·]``. This is the
same forward as peft's ``base(x) + B(A(dropout(x))) * alpha/r`` for each slice, and `StackedAdamW`
is ``torch.optim.AdamW``'s update with per-adapter learning rate and weight decay.

DoRA (``dora=True``, peft's ``use_dora``): each slot also has a magnitude ``lora_magnitude: [K, out]``
and the slot's weight is ``W' = m ⊙ (W + s·B A) / ‖W + s·B A‖`` (norm per output row, detached from the
graph as peft does), computed as peft's ``DoraLinearLayer.forward``: ``base(x) + (m/‖·‖ - 1)·(x Wᵀ) +
m/‖·‖ · s · B A x``; the magnitude starts at the row norms of ``W + s·B A`` (`init_magnitude`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

DORA_NORM_CHUNK = 1 << 26  # elements of [slots, out, in] formed at once for the DoRA weight norms


class MultiLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, k: int, r_max: int, dora: bool = False):
        super().__init__()
        self.base = base
        self.k, self.r_max = k, r_max
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.zeros(k, r_max, base.in_features, device=dev))
        self.lora_B = nn.Parameter(torch.zeros(k, base.out_features, r_max, device=dev))
        self.register_buffer("rank_mask", torch.ones(k, r_max, device=dev))
        self.register_buffer("scaling", torch.ones(k, device=dev))
        self.register_buffer("dropout_p", torch.zeros(k, device=dev))
        self.any_dropout = False  # host-side copy of (dropout_p > 0).any(): reading the buffer would sync
        self.generator: torch.Generator | None = None
        if dora:  # peft's lora_magnitude_vector, one per slot (set by `init_magnitude`)
            self.lora_magnitude = nn.Parameter(torch.zeros(k, base.out_features, device=dev))
        else:
            self.register_parameter("lora_magnitude", None)

    @property
    def dora(self) -> bool:
        return self.lora_magnitude is not None

    @torch.no_grad()
    def weight_norm(self, slots: slice | None = None) -> torch.Tensor:
        """‖W + s·B A‖ per output row for the slots ([K', out], float32, no graph): peft's
        ``DoraLinearLayer.get_weight_norm``, the product formed in chunks of slots."""
        slots = slots or slice(0, self.k)
        w = self.base.weight.float()
        a = self.lora_A[slots]
        b = self.lora_B[slots] * self.rank_mask[slots].unsqueeze(1)
        s = self.scaling[slots]
        step = max(1, DORA_NORM_CHUNK // w.numel())
        out = []
        for i in range(0, a.shape[0], step):
            dw = torch.bmm(b[i:i + step], a[i:i + step])  # [k', out, in]
            out.append(torch.linalg.norm(w + s[i:i + step].view(-1, 1, 1) * dw, dim=2))
        return torch.cat(out)

    @torch.no_grad()
    def init_magnitude(self, slot: int) -> None:
        """peft's init: the magnitude is the row norms of W + s·B A (with B = 0 at init: of W)."""
        self.lora_magnitude[slot] = self.weight_norm(slice(slot, slot + 1))[0]

    def set_dropout(self, slot: int, p: float) -> None:
        self.dropout_p[slot] = p
        self.any_dropout = self.any_dropout or p > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        k = self.k
        xs = x.reshape(k, -1, x.shape[-1]).float()  # [K, b*T, in]
        if self.training and self.any_dropout:
            keep = (1.0 - self.dropout_p).view(k, 1, 1)
            if self.generator is None:  # compiled: rand_like takes symbolic sizes, rand(..., generator=) does not
                noise = torch.rand_like(xs)
            else:
                noise = torch.rand(xs.shape, device=xs.device, generator=self.generator)
            xs = xs * (noise < keep) / keep
        h = torch.bmm(xs, self.lora_A.transpose(1, 2)) * self.rank_mask.unsqueeze(1)
        if self.lora_magnitude is not None:
            return y + self._dora(x, xs, y, torch.bmm(h, self.lora_B.transpose(1, 2))).reshape(y.shape).to(y.dtype)
        out = torch.bmm(h, self.lora_B.transpose(1, 2)) * self.scaling.view(k, 1, 1)
        return y + out.reshape(y.shape).to(y.dtype)

    def _dora(self, x: torch.Tensor, xs: torch.Tensor, y: torch.Tensor, lora: torch.Tensor) -> torch.Tensor:
        """peft's DoRA term ``(m/‖W + s·B A‖ - 1)·base + m/‖W + s·B A‖ · s · B A x``, per slot: ``base`` is
        the frozen output without bias, or (a slot whose dropout acts) x's dropped copy times Wᵀ."""
        k = self.k
        scale = (self.lora_magnitude / self.weight_norm()).unsqueeze(1)  # [K, 1, out]
        base = y.reshape(k, -1, y.shape[-1])
        if self.base.bias is not None:
            base = base - self.base.bias
        base = base.float()
        if self.training and self.any_dropout:
            dropped = nn.functional.linear(xs, self.base.weight.float())
            base = torch.where((self.dropout_p > 0).view(k, 1, 1), dropped, base)
        return (scale - 1) * base + scale * lora * self.scaling.view(k, 1, 1)


def find_targets(model: nn.Module, target_modules: Iterable[str]) -> list[str]:
    """Names of the nn.Linear modules a target names, by peft's rule for a list: the whole name or a
    dotted suffix of it (``k_proj``; ``to_out.0``, the output projection of a diffusers attention)."""
    wanted = tuple(target_modules)
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in wanted)]


def inject(model: nn.Module, names: list[str], k: int, r_max: int, dora: bool = False) -> dict[str, MultiLoRALinear]:
    """Replace the named linears by K-adapter wrappers (in place; ``dora``: with magnitudes). Freezes
    everything else."""
    for p in model.parameters():
        p.requires_grad_(False)
    out = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        cur = getattr(parent, child)
        base = cur.base if isinstance(cur, MultiLoRALinear) else cur
        wrapped = MultiLoRALinear(base, k, r_max, dora=dora)
        setattr(parent, child, wrapped)
        out[name] = wrapped
    return out


def eject(model: nn.Module, names: list[str]) -> None:
    """Put the plain base linears back."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        cur = getattr(parent, child)
        if isinstance(cur, MultiLoRALinear):
            setattr(parent, child, cur.base)


def kaiming_init_A(shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """peft's default lora_A init, kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)), drawn on CPU."""
    bound = 1.0 / math.sqrt(shape[1])
    return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound


def to_device(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """A small per-step host tensor on `dev` without waiting for the GPU: a plain ``.to(cuda)``
    synchronises the stream, which would stop the host from preparing the next step meanwhile."""
    if dev.type != "cuda":
        return t.to(dev)
    return t.pin_memory().to(dev, non_blocking=True)


class StackedAdamW:
    """torch.optim.AdamW (betas, eps, decoupled weight decay, bias correction) for stacked factors, with a
    learning rate and weight decay per adapter and a per-adapter ``active`` switch (finished adapters
    freeze, their moments untouched). Follows torch's arithmetic order so results match to rounding."""

    def __init__(self, params: list[torch.Tensor], k: int, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = params
        self.k = k
        self.b1, self.b2 = betas
        self.eps = eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.step_count = torch.zeros(k, dtype=torch.float64)

    @torch.no_grad()
    def step(self, lr: torch.Tensor, wd: torch.Tensor, active: torch.Tensor) -> None:
        """lr, wd: [K] float tensors (this step's values); active: [K] bool."""
        self.step_count += active.double()
        t = self.step_count.clamp(min=1)
        bc1 = (1 - self.b1 ** t)
        bc2_sqrt = (1 - self.b2 ** t).sqrt()
        act = active.to(torch.float32)
        dev = self.params[0].device
        decay_k = to_device((1 - lr.double() * wd.double() * active.double()).float(), dev)
        step_size_k = to_device((lr.double() / bc1 * active.double()).float(), dev)
        bc2s_k = to_device(bc2_sqrt.float(), dev)
        a_k = to_device(act, dev)
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad
            if g is None:
                continue
            shape = (self.k,) + (1,) * (p.ndim - 1)  # factors [K, ·, ·], DoRA magnitudes [K, out]
            decay, step_size, bc2s, a = (t.view(shape) for t in (decay_k, step_size_k, bc2s_k, a_k))
            p.mul_(decay)
            # inactive adapters keep their moments: blend with the active mask
            m.copy_(torch.where(a > 0, torch.lerp(m, g, 1 - self.b1), m))
            v.copy_(torch.where(a > 0, v * self.b2 + g * g * (1 - self.b2), v))
            denom = v.sqrt() / bc2s + self.eps
            p.sub_(step_size * m / denom)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


# ---- the training loop for one group of adapters ---------------------------------------------
def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body (returns hidden states) and the output projection of a HF causal LM."""
    body = getattr(model, model.base_model_prefix)
    return body, model.get_output_embeddings()


def hidden_states(model: nn.Module, ids: torch.Tensor, body=None) -> torch.Tensor:
    """Last hidden states of the transformer body; `body` replaces it (a compiled copy, say)."""
    body = body if body is not None else decoder_and_head(model)[0]
    return body(input_ids=ids, use_cache=False).last_hidden_state


def compiled_body(model: nn.Module):
    """``torch.compile`` of the transformer body, made once per model and kept on it. The first shape
    compiles static code; when the batch rows or the length change (a zoo's groups differ in batch size,
    steps in length, which callers round up to a multiple of 32), torch recompiles once with those sizes
    symbolic, and later shapes reuse that."""
    body, _ = decoder_and_head(model)
    fn = getattr(model, "_lolscan_compiled_body", None)
    if fn is None:
        fn = torch.compile(body)
        object.__setattr__(model, "_lolscan_compiled_body", fn)  # not a submodule: no state_dict entry
    return fn


def _token_nll(head: nn.Module, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(h).float()
    return nn.functional.cross_entropy(logits, targets, reduction="none")


def token_nll(head: nn.Module, h: torch.Tensor, targets: torch.Tensor, chunk: int = 8192,
              checkpoint: bool = False) -> torch.Tensor:
    """Per-token negative log-likelihood, in chunks of tokens so the [tokens, vocab] logits never exist
    at once; with ``checkpoint`` each chunk's logits are recomputed in backward instead of kept."""
    out = []
    for i in range(0, h.shape[0], chunk):
        if checkpoint and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint as ckpt

            out.append(ckpt(_token_nll, head, h[i:i + chunk], targets[i:i + chunk], use_reentrant=False))
        else:
            out.append(_token_nll(head, h[i:i + chunk], targets[i:i + chunk]))
    return torch.cat(out) if out else h.new_zeros(0)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_batch(seqs: list[list[int]], pad_id: int = 0, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and lengths (length rounded up to `multiple`). Right padding under a causal mask
    needs no attention mask: real tokens never see the pads that follow them."""
    t = round_up(max(len(s) for s in seqs), multiple)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, torch.tensor([len(s) for s in seqs])


def lm_loss_per_row(model: nn.Module, ids: torch.Tensor, lengths: torch.Tensor,
                    checkpoint: bool = False, body=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL and token count per row (the HF causal-LM loss before averaging).

    `ids` and `lengths` are host tensors: which positions count is worked out on the host, so the
    step never waits for the GPU to say how many there are."""
    dev = next(model.parameters()).device
    n, t = ids.shape
    valid = torch.arange(t - 1).unsqueeze(0) < (lengths - 1).unsqueeze(1)  # [n, t-1]
    flat = valid.reshape(-1).nonzero().squeeze(1)
    ids_d, flat_d = to_device(ids, dev), to_device(flat, dev)
    h = hidden_states(model, ids_d, body)
    _, head = decoder_and_head(model)
    hs = h[:, :-1].reshape(-1, h.shape[-1]).index_select(0, flat_d)
    tg = ids_d[:, 1:].reshape(-1).index_select(0, flat_d)
    nll = token_nll(head, hs, tg, checkpoint=checkpoint)
    sums = torch.zeros(n, device=dev, dtype=torch.float32).index_add_(0, to_device(flat // (t - 1), dev), nll)
    return sums, to_device(valid.sum(1).to(torch.float32), dev)


@dataclass
class Packed:
    """Sequences packed end to end into rows (no padding between them), right-padded to one length.

    ``seg`` numbers the sequences in order (row by row), -1 on padding; ``pos`` restarts at 0 in every
    sequence, so rotary positions are those each sequence would have alone."""

    ids: torch.Tensor  # [R, T]
    pos: torch.Tensor  # [R, T]
    seg: torch.Tensor  # [R, T]
    n_seg: int


def pack_rows(rows: list[list[list[int]]], pad_id: int = 0, multiple: int = 64) -> Packed:
    """Each row is a list of token sequences laid end to end. The length is rounded up to `multiple`,
    so a run sees few distinct shapes (each new shape costs the attention library a new plan)."""
    t = round_up(max(sum(len(s) for s in row) for row in rows), multiple)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), t), dtype=torch.long)
    seg = torch.full((len(rows), t), -1, dtype=torch.long)
    n = 0
    for r, row in enumerate(rows):
        at = 0
        for s in row:
            ids[r, at:at + len(s)] = torch.tensor(s, dtype=torch.long)
            pos[r, at:at + len(s)] = torch.arange(len(s))
            seg[r, at:at + len(s)] = n
            at += len(s)
            n += 1
    return Packed(ids, pos, seg, n)


def packed_mask(seg: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive [R, 1, T, T] attention mask: each token sees the earlier tokens of its own sequence.
    Padding sees earlier padding (never nothing: an all-masked row would give NaN)."""
    t = seg.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=seg.device).tril()
    allowed = (seg.unsqueeze(2) == seg.unsqueeze(1)) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def packed_nll(model: nn.Module, p: Packed, checkpoint: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL and token count of every packed sequence ([n_seg] each)."""
    body, head = decoder_and_head(model)
    dev = next(model.parameters()).device
    ids, seg = p.ids.to(dev), p.seg.to(dev)
    mask = packed_mask(seg, head.weight.dtype)
    h = body(input_ids=ids, position_ids=p.pos.to(dev), attention_mask=mask, use_cache=False).last_hidden_state
    valid = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] >= 0)  # the next token is in the same sequence
    flat = valid.reshape(-1).nonzero().squeeze(1)
    hs = h[:, :-1].reshape(-1, h.shape[-1]).index_select(0, flat)
    tg = ids[:, 1:].reshape(-1).index_select(0, flat)
    owner = seg[:, :-1].reshape(-1).index_select(0, flat)
    nll = token_nll(head, hs, tg, checkpoint=checkpoint)
    sums = torch.zeros(p.n_seg, device=dev, dtype=torch.float32).index_add_(0, owner, nll)
    counts = torch.zeros(p.n_seg, device=dev, dtype=torch.float32).index_add_(0, owner, torch.ones_like(nll))
    return sums, counts


def adapter_seed(seed: int, index: int, stream: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([seed, index, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def init_factors(modules: dict[str, "MultiLoRALinear"], slot: int, seed: int, index: int,
                 ranks: dict[str, int]) -> None:
    """peft-style init of one adapter slot, drawn from that adapter's own generator (module order)."""
    gen = torch.Generator().manual_seed(adapter_seed(seed, index, 2))
    with torch.no_grad():
        for name, mod in modules.items():
            r = ranks[name]
            a = kaiming_init_A((r, mod.base.in_features), gen)
            mod.lora_A[slot].zero_()
            mod.lora_A[slot, :r] = a.to(mod.lora_A.device)
            mod.lora_B[slot].zero_()
            mod.rank_mask[slot] = (torch.arange(mod.r_max, device=mod.rank_mask.device) < r).float()


def train_group(model: nn.Module, target_names: list[str], specs: list, train_pool: dict[str, list[list[int]]],
                seed: int, lr_schedule: str = "constant", checkpoint_logits: bool = True,
                batches: list[list[list[list[int]]]] | None = None,
                compile: bool = False, max_per_source: int | None = None, dora: bool = False
                ) -> tuple[dict[str, MultiLoRALinear], torch.Tensor]:
    """Train len(specs) adapters at once; returns the injected modules (factors live there) and the
    per-step training loss of each adapter, shape [max_steps, K] (NaN after an adapter finished).

    Every example gets its own padded row. (Packing each adapter's examples into one row with a
    block-diagonal mask was tried: equal to peft on CPU, but on an H200 the backward pass gave NaN
    factors for most groups of 4-example batches, and it was no faster at K = 32; see bench/RESULTS.md.)
    ``batches`` (tests): explicit per-adapter batches [K][steps][b] of token lists instead of sampling.
    ``max_per_source``: each adapter samples from its own capped subset of every member source (`lora_pool`).

    ``compile``: run the transformer body through ``torch.compile`` (`compiled_body`), lengths padded to a
    multiple of 32. Compiled code cannot take a ``torch.Generator``, so LoRA dropout then draws from the
    global RNG, seeded from the same per-group seed inside ``fork_rng`` (deterministic, but other masks
    than the eager path draws; the same function otherwise)."""
    import numpy as np

    dev = next(model.parameters()).device
    k = len(specs)
    r_max = max(s.rank for s in specs)
    mods = inject(model, target_names, k, r_max, dora=dora)
    for slot, s in enumerate(specs):
        ranks = s.layer_ranks or {n: s.rank for n in target_names}
        init_factors(mods, slot, seed, s.index, ranks)
        for name, mod in mods.items():
            mod.scaling[slot] = s.alpha / ranks[name]
            mod.set_dropout(slot, s.dropout)
            if dora:
                mod.init_magnitude(slot)
    dropout_seed = adapter_seed(seed, specs[0].index, 3)
    gen = None if compile else torch.Generator(device=dev).manual_seed(dropout_seed)
    for mod in mods.values():
        mod.generator = gen
    body = compiled_body(model) if compile else None
    params = trainable(mods)
    for p in params:
        p.requires_grad_(True)
    opt = StackedAdamW(params, k)
    steps = torch.tensor([s.steps for s in specs])
    b_max = max(s.batch_size for s in specs)
    max_steps = int(steps.max())
    if batches is None:
        draws = []
        for s in specs:
            if max_per_source is None:
                pool = [x for src in s.sources for x in train_pool[src]]
            else:
                from .recipe import lora_pool

                pool = [x for xs in lora_pool(s, train_pool, seed, max_per_source).values() for x in xs]
            rng = np.random.default_rng(np.random.SeedSequence([seed, s.index, 1]))
            idx = rng.integers(0, len(pool), size=(s.steps, s.batch_size))
            draws.append([[pool[j] for j in row] for row in idx])
    else:
        draws = batches
    lr0 = torch.tensor([s.lr for s in specs], dtype=torch.float64)
    wd = torch.tensor([s.weight_decay for s in specs], dtype=torch.float64)
    losses = torch.full((max_steps, k), float("nan"), device=dev)  # read back once, after the last step
    model.train()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else [], enabled=compile):
        if compile:
            torch.manual_seed(dropout_seed)
        for t in range(max_steps):
            active = steps > t
            seqs, weight = [], torch.zeros(k * b_max)
            for slot, s in enumerate(specs):
                rows = draws[slot][min(t, s.steps - 1)]
                for j in range(b_max):
                    seqs.append(rows[j % len(rows)])
                    weight[slot * b_max + j] = float(active[slot] and j < len(rows))
            ids, lengths = pad_batch(seqs, multiple=32 if compile else 1)
            sums, counts = lm_loss_per_row(model, ids, lengths, checkpoint=checkpoint_logits, body=body)
            w = to_device(weight, dev)
            per_adapter = (sums * w).view(k, b_max).sum(1) / (counts * w).view(k, b_max).sum(1).clamp(min=1)
            per_adapter.sum().backward()
            if lr_schedule == "linear":
                lr = lr0 * (steps.double() - t).clamp(min=0) / steps.double()
            else:
                lr = lr0
            opt.step(lr, wd, active)
            opt.zero_grad()
            losses[t] = torch.where(to_device(active, dev), per_adapter.detach().float(), float("nan"))
    model.eval()
    for p in params:
        p.requires_grad_(False)
    return mods, losses.cpu()


def trainable(mods: dict[str, MultiLoRALinear]) -> list[nn.Parameter]:
    """What `StackedAdamW` trains: every wrapper's A and B, and its DoRA magnitude when it has one."""
    return [p for m in mods.values() for p in (m.lora_A, m.lora_B, m.lora_magnitude) if p is not None]


def all_finite(mods: dict[str, MultiLoRALinear]) -> list[bool]:
    """Per slot: every factor (and magnitude) finite. False: the adapter diverged."""
    return torch.stack([torch.isfinite(p).flatten(1).all(1) for p in trainable(mods)]).all(0).tolist()


def extract_magnitude(mods: dict[str, MultiLoRALinear], slot: int) -> dict[str, torch.Tensor] | None:
    """One adapter's DoRA magnitudes [out] (peft's ``lora_magnitude_vector``), or None without DoRA."""
    if not any(m.dora for m in mods.values()):
        return None
    return {n: m.lora_magnitude[slot].detach().float().cpu().clone() for n, m in mods.items()}


def extract(mods: dict[str, MultiLoRALinear], slot: int, ranks: dict[str, int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One adapter's factors as peft stores them: lora_A [r, in], lora_B [out, r] (scale not folded)."""
    return {n: (m.lora_A[slot, : ranks[n]].detach().float().cpu().clone(),
                m.lora_B[slot, :, : ranks[n]].detach().float().cpu().clone()) for n, m in mods.items()}
