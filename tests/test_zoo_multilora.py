"""K adapters trained at once == K separate peft LoRA trainings from the same init on the same batches."""
from __future__ import annotations

import copy

import pytest
import torch

from zoo_toy import peft_causal_lm_steps, peft_with_zoo_init, tiny_llama

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from lolscan.zoo.multilora import eject, extract, find_targets, train_group  # noqa: E402
from lolscan.zoo.recipe import LoraSpec  # noqa: E402

SEED = 11


def _spec(i, rank, lr, steps, bs, wd, layer_ranks=None):
    return LoraSpec(index=i, rank=rank, layer_ranks=layer_ranks, alpha=2.0 * rank, lr=lr, steps=steps,
                    batch_size=bs, dropout=0.0, weight_decay=wd, sources=["s"], split="train")


def _batches(spec, gen):
    return [[torch.randint(3, 64, (int(torch.randint(5, 14, (1,), generator=gen)),), generator=gen).tolist()
             for _ in range(spec.batch_size)] for _ in range(spec.steps)]


def _peft_reference(base, targets, spec, batches, schedule):
    """The plain way: peft LoRA + torch.optim.AdamW + HF's causal-LM loss, one adapter."""
    ranks = spec.layer_ranks or {n: spec.rank for n in targets}
    pattern = {n: r for n, r in ranks.items() if r != spec.rank}
    pm, inner = peft_with_zoo_init(base, targets, spec, ranks, SEED, rank_pattern=pattern)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda t: max(0.0, (spec.steps - t) / spec.steps)) if schedule == "linear" else (lambda t: 1.0))
    losses = peft_causal_lm_steps(pm, batches, opt, sched)
    factors = {n: (inner.get_submodule(n).lora_A["default"].weight.detach().clone(),
                   inner.get_submodule(n).lora_B["default"].weight.detach().clone()) for n in targets}
    return losses, factors


@pytest.mark.parametrize("schedule,attn", [("linear", "eager"), ("constant", "sdpa")])
def test_stacked_training_equals_separate_peft_runs(schedule, attn):
    base = tiny_llama()
    targets = find_targets(base, ["k_proj", "v_proj"])
    assert len(targets) == 4
    specs = [
        _spec(0, 2, 5e-3, 4, 3, 0.0),
        _spec(1, 4, 2e-2, 2, 2, 0.1),  # larger rank (others are padded), fewer steps, smaller batch
        _spec(2, 2, 1e-3, 3, 3, 0.01,
              layer_ranks={targets[0]: 1, targets[1]: 2, targets[2]: 2, targets[3]: 1}),  # per-layer ranks
    ]
    gen = torch.Generator().manual_seed(0)
    batches = [_batches(s, gen) for s in specs]
    model = copy.deepcopy(base)
    model.config._attn_implementation = attn
    mods, losses = train_group(model, targets, specs, {}, SEED, schedule, batches=batches)
    for slot, s in enumerate(specs):
        ref_losses, ref_factors = _peft_reference(base, targets, s, batches[slot], schedule)
        got = losses[: s.steps, slot]
        assert torch.allclose(got, torch.tensor(ref_losses), rtol=0, atol=2e-5), (got, ref_losses)
        assert torch.isnan(losses[s.steps:, slot]).all()
        ranks = s.layer_ranks or {n: s.rank for n in targets}
        ours = extract(mods, slot, ranks)
        for n in targets:
            a, b = ours[n]
            ra, rb = ref_factors[n]
            assert a.shape == ra.shape and b.shape == rb.shape
            assert torch.allclose(a, ra, atol=2e-5), (n, (a - ra).abs().max())
            assert torch.allclose(b, rb, atol=2e-5), (n, (b - rb).abs().max())
            assert b.abs().max() > 0  # it did train
    eject(model, targets)
    # the base weights were never touched
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), base.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_dropout_is_per_adapter():
    """Slot with p=0 is deterministic under training mode; slot with p>0 is not (and is rescaled)."""
    from lolscan.zoo.multilora import inject

    base = tiny_llama()
    targets = find_targets(base, ["k_proj"])
    mods = inject(base, targets, 2, 2)
    m = mods[targets[0]]
    with torch.no_grad():
        m.lora_A.normal_()
        m.lora_B.normal_()
    m.set_dropout(1, 0.5)
    m.train()
    x = torch.randn(2 * 3, 5, 32)
    y1, y2 = m(x), m(x)
    assert torch.equal(y1[:3], y2[:3])
    assert not torch.equal(y1[3:], y2[3:])
    m.eval()
    assert torch.equal(m(x), m(x))


def test_compiled_training_equals_separate_peft_runs():
    """``compile=True`` runs the body through torch.compile (lengths padded to a multiple of 32): still the
    same adapters as separate peft runs; with dropout its masks come from a seeded RNG, so two runs agree."""
    base = tiny_llama()
    base.config.num_hidden_layers = 1
    base.model.layers = base.model.layers[:1]
    targets = find_targets(base, ["k_proj", "v_proj"])
    specs = [_spec(0, 2, 5e-3, 3, 2, 0.0), _spec(1, 4, 2e-2, 2, 3, 0.1)]
    gen = torch.Generator().manual_seed(3)
    batches = [_batches(s, gen) for s in specs]
    model = copy.deepcopy(base)
    model.config._attn_implementation = "sdpa"
    mods, losses = train_group(model, targets, specs, {}, SEED, batches=batches, compile=True)
    no_dropout = []
    for slot, s in enumerate(specs):
        ref_losses, ref_factors = _peft_reference(base, targets, s, batches[slot], "constant")
        no_dropout.append(ref_losses[:2])
        assert torch.allclose(losses[: s.steps, slot], torch.tensor(ref_losses), rtol=0, atol=2e-5)
        ours = extract(mods, slot, {n: s.rank for n in targets})
        for n in targets:
            for got, ref in zip(ours[n], ref_factors[n]):
                assert torch.allclose(got, ref, atol=2e-5), (n, (got - ref).abs().max())
    eject(model, targets)
    dropped = [LoraSpec(**{**s.__dict__, "dropout": 0.3}) for s in specs]
    runs = []
    for _ in range(2):
        mods, losses = train_group(model, targets, dropped, {}, SEED, batches=batches, compile=True)
        runs.append((losses, extract(mods, 1, {n: 4 for n in targets})))
        eject(model, targets)
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0, equal_nan=True)  # NaN: finished slots
    assert all(torch.equal(a, b) for n in targets for a, b in zip(runs[0][1][n], runs[1][1][n]))
    assert not torch.allclose(runs[0][0][:2], torch.tensor(no_dropout).T, atol=1e-4)  # dropout really acted
