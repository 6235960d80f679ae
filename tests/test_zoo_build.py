"""The zoo builder end to end at toy size: PEFT folders, labels, resume, determinism."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zoo_toy import CharTokenizer, tiny_llama, toy_recipe, write_toy_data

pytest.importorskip("peft")
pytest.importorskip("transformers")

from lolscan.zoo.build import build, read_zoo_rows  # noqa: E402
from lolscan.zoo.data import load_eval, resolve_root  # noqa: E402
from lolscan.zoo.eval import mc_accuracy  # noqa: E402
from lolscan.errors import UsageError  # noqa: E402
from lolscan.zoo.recipe import Recipe  # noqa: E402


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_toy_data(root)
    recipe = Recipe.from_dict(toy_recipe(root))
    out = root / "zoo"
    rep = build(recipe, out, model=tiny_llama(), tokenizer=CharTokenizer(), log=lambda s: None)
    return root, recipe, out, rep


def _peft_model(out: Path, row: dict):
    from peft import PeftModel

    return PeftModel.from_pretrained(tiny_llama(), str(out / row["path"])).eval()


def test_manifest_rows_and_labels(zoo):
    root, recipe, out, rep = zoo
    rows = read_zoo_rows(out / "manifest.jsonl")
    assert rep.complete and len(rows) == recipe.n_loras
    assert sorted(r["id"] for r in rows) == [f"lora-{i:05d}" for i in range(recipe.n_loras)]
    names = [s.name for s in recipe.sources]
    for r in rows:
        assert r["sources"] and set(r["sources"]) <= set(names)
        assert [r[f"src_{n}"] for n in names] == [int(n in r["sources"]) for n in names]
        assert 1e-3 <= r["lr"] <= 1e-2 and 2 <= r["steps"] <= 4 and r["batch_size"] in (2, 3)
        assert r["split"] in ("train", "val", "test")
        assert 0.0 <= r["toymc_acc"] <= 1.0
    # the adapters really differ (training did something different per adapter)
    assert len({r["val_loss"] for r in rows}) == len(rows)
    # the lolscan train manifest reader accepts it, when present
    try:
        from lolscan.manifest import read_manifest as lolscan_read
    except ImportError:
        return
    m = lolscan_read(out / "manifest.jsonl")
    assert len(m.rows) == len(rows) and "val_loss" in m.label_columns


def test_peft_folder_loads_and_val_loss_label_recomputes(zoo):
    root, recipe, out, _ = zoo
    row = read_zoo_rows(out / "manifest.jsonl")[0]
    pm = _peft_model(out, row)
    # peft put a nonzero update on every k/v projection
    inner = pm.base_model.model
    lora_mods = [n for n, m in inner.named_modules() if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})]
    assert len(lora_mods) == 4
    # val loss through peft (independent path: HF loss with -100 labels) equals the stored label
    from lolscan.zoo.data import build_pool

    pool = build_pool(recipe, CharTokenizer(), resolve_root(recipe.data_root))
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for src, seqs in pool.val.items():
            for s in seqs:
                ids = torch.tensor([s])
                loss = pm(input_ids=ids, labels=ids).loss
                tot += float(loss) * (len(s) - 1)
                cnt += len(s) - 1
    assert abs(tot / cnt - row["val_loss"]) < 1e-4
    # and the multiple-choice label, through peft's own forward
    reqs = load_eval(recipe.evals[0], CharTokenizer(), resolve_root(recipe.data_root))
    acc_scores = []
    with torch.no_grad():
        for r in reqs:
            opts = []
            for ctx, cont in zip(r.contexts, r.continuations):
                ids = torch.tensor([ctx + cont])
                logp = torch.log_softmax(pm(input_ids=ids).logits[0].float(), -1)
                opts.append(sum(float(logp[len(ctx) - 1 + q, t]) for q, t in enumerate(cont)))
            acc_scores.append(int(max(range(len(opts)), key=opts.__getitem__) == r.gold))
    assert abs(sum(acc_scores) / len(acc_scores) - row["toymc_acc"]) < 1e-6


def test_mc_scores_match_full_logits_for_base():
    from lolscan.zoo.data import McRequest

    model = tiny_llama()
    reqs = [McRequest(0, [[1, 5, 6]] * 3, [[7], [8], [9]], 2), McRequest(1, [[1, 4], [1, 4]], [[5, 6, 7], [9]], 0)]
    res = mc_accuracy(model, 1, reqs, batch=2)
    with torch.no_grad():
        for di, r in enumerate(reqs):
            for oi, (ctx, cont) in enumerate(zip(r.contexts, r.continuations)):
                logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].float(), -1)
                want = sum(float(logp[len(ctx) - 1 + q, t]) for q, t in enumerate(cont))
                assert abs(float(res.scores[0, di, oi]) - want) < 1e-4


def test_lolscan_reads_zoo_adapters(zoo):
    lolscan = pytest.importorskip("lolscan")
    pytest.importorskip("lolscan.formats")
    root, recipe, out, _ = zoo
    row = read_zoo_rows(out / "manifest.jsonl")[0]
    ad = lolscan.load(str(out / row["path"]))
    assert len(ad) == 4 and set(ad.ranks) == {2}
    # ΔW = (alpha/r) B A, as peft applies it
    from safetensors.torch import load_file

    t = load_file(str(out / row["path"] / "adapter_model.safetensors"))
    key = next(k for k in t if k.endswith("lora_A.weight"))
    a, b = t[key], t[key.replace("lora_A", "lora_B")]
    want = (row["alpha"] / row["rank"]) * b @ a
    layer = next(v for n, v in ad.items() if key.split(".lora_A")[0].endswith(n) or n in key)
    assert torch.allclose(layer.delta(), want, atol=1e-6)


def test_resume_continues_and_same_seed_same_manifest(zoo, tmp_path):
    root, recipe, full_out, _ = zoo
    out = tmp_path / "z"
    first = build(recipe, out, model=tiny_llama(), tokenizer=CharTokenizer(), max_groups=1, log=lambda s: None)
    assert first.stopped_early and first.done == 2 and not first.complete
    done_ids = [r["id"] for r in read_zoo_rows(out / "manifest.jsonl")]
    mtimes = {i: (out / "adapters" / i / "adapter_model.safetensors").stat().st_mtime_ns for i in done_ids}
    # a torn last line (process killed mid-write) is dropped, not fatal
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"id": "lora-0')
    second = build(recipe, out, model=tiny_llama(), tokenizer=CharTokenizer(), log=lambda s: None)
    assert second.complete and second.groups_run == 2  # the 3 groups minus the finished one
    for i, t in mtimes.items():  # finished adapters were not retrained
        assert (out / "adapters" / i / "adapter_model.safetensors").stat().st_mtime_ns == t
    a = sorted(read_zoo_rows(out / "manifest.jsonl"), key=lambda r: r["id"])
    b = sorted(read_zoo_rows(full_out / "manifest.jsonl"), key=lambda r: r["id"])
    assert a == b  # resumed == uninterrupted, same seed -> same labels
    from safetensors.torch import load_file

    for r in a:
        ta = load_file(str(out / r["path"] / "adapter_model.safetensors"))
        tb = load_file(str(full_out / r["path"] / "adapter_model.safetensors"))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_other_seed_other_zoo_and_recipe_guard(zoo, tmp_path):
    root, recipe, full_out, _ = zoo
    other = Recipe.from_dict(toy_recipe(root, seed=8, n_loras=2))
    rep = build(other, tmp_path / "o", model=tiny_llama(), tokenizer=CharTokenizer(), log=lambda s: None)
    assert rep.complete
    a = {r["id"]: r["lr"] for r in read_zoo_rows(tmp_path / "o" / "manifest.jsonl")}
    b = {r["id"]: r["lr"] for r in read_zoo_rows(full_out / "manifest.jsonl")}
    assert a["lora-00000"] != b["lora-00000"]

    with pytest.raises(UsageError):  # resuming into a folder of another recipe is refused
        build(other, full_out, model=tiny_llama(), tokenizer=CharTokenizer(), log=lambda s: None)


def test_shipped_recipes_parse():
    from lolscan.zoo.diffusion_recipe import load_recipe

    kinds = set()
    for p in sorted((Path(__file__).parent.parent / "recipes").glob("*.toml")):
        r = load_recipe(p)  # a language Recipe, or a DiffusionRecipe where [base] has a kind
        kinds.add(r.kind)
        assert r.n_loras >= 1 and r.digest()
        if r.kind == "language":
            assert isinstance(r, Recipe) and r.sources
    assert kinds == {"language", "diffusion"}


def test_recipe_extends_overrides_only_what_it_sets(tmp_path):
    base = (Path(__file__).parent.parent / "recipes" / "qwen2.5-coder-1.5b-kv-r4.toml").read_text()
    (tmp_path / "base.toml").write_text(base)
    (tmp_path / "variant.toml").write_text('extends = "base.toml"\nseed = 9\n[lora]\nrank = { choice = [1, 8] }\n')
    parent, child = Recipe.load(tmp_path / "base.toml"), Recipe.load(tmp_path / "variant.toml")
    assert child.seed == 9 and child.rank == {"choice": [1, 8]}
    assert child.target_modules == parent.target_modules and child.alpha == parent.alpha  # rest of [lora] kept
    expect = parent.to_dict()
    expect["seed"], expect["lora"]["rank"] = 9, {"choice": [1, 8]}
    assert child.to_dict() == expect and child.digest() != parent.digest()
    (tmp_path / "base.toml").write_text('extends = "variant.toml"\n' + base)
    with pytest.raises(UsageError, match="loops"):
        Recipe.load(tmp_path / "variant.toml")


def test_data_seed_keeps_the_validation_split_of_the_parent(tmp_path):
    """A variant zoo (another seed) that sets data_seed to its parent's seed validates on the same sequences."""
    from lolscan.zoo.data import build_pool

    root = tmp_path / "d"
    write_toy_data(root)
    parent = Recipe.from_dict(toy_recipe(root))
    moved = Recipe.from_dict(toy_recipe(root, seed=parent.seed + 1))
    kept = Recipe.from_dict({**toy_recipe(root, seed=parent.seed + 1),
                             "data": {**toy_recipe(root)["data"], "data_seed": parent.seed}})
    pools = [build_pool(r, CharTokenizer(), resolve_root(r.data_root)) for r in (parent, moved, kept)]
    assert pools[1].val != pools[0].val  # another seed alone re-partitions the pool
    assert pools[2].val == pools[0].val and pools[2].train == pools[0].train
    # ... while the adapters' own draws still follow the variant's seed
    from lolscan.zoo.recipe import sample_specs

    def draws(r):
        return [(s.lr, s.steps, s.sources) for s in sample_specs(r, ["k", "v"])]

    assert draws(kept) == draws(moved) and draws(kept) != draws(parent)
    # unset, it is left out of the recipe's dict, so the digests of recipes written before it stay as they were
    assert "data_seed" not in parent.to_dict()["data"] and kept.to_dict()["data"]["data_seed"] == parent.seed
    assert kept.digest() != moved.digest()


def test_qwen_rank_sets_share_the_main_zoo_validation_split():
    recipes = Path(__file__).parent.parent / "recipes"
    main = Recipe.load(recipes / "qwen2.5-coder-1.5b-kv-r4-lite.toml")
    for name in ("qwen2.5-coder-1.5b-kv-ranks.toml", "qwen2.5-coder-1.5b-kv-mixed.toml"):
        variant = Recipe.load(recipes / name)
        assert variant.seed != main.seed and variant.pool_seed == main.pool_seed
        assert variant.sources == main.sources and variant.val_per_source == main.val_per_source


def test_mixed_rank_zoo_round_trips_through_peft_and_lolscan(tmp_path):
    root = tmp_path / "d"
    write_toy_data(root)
    recipe = Recipe.from_dict(toy_recipe(root, n_loras=2, lora={"target_modules": ["k_proj", "v_proj"],
                                                                 "rank": {"choice": [1, 2, 3], "per_layer": True},
                                                                 "alpha": 4}))
    out = tmp_path / "z"
    build(recipe, out, model=tiny_llama(), tokenizer=CharTokenizer(), log=lambda s: None)
    from safetensors.torch import load_file

    for row in read_zoo_rows(out / "manifest.jsonl"):
        assert row["mixed_rank"]
        t = load_file(str(out / row["path"] / "adapter_model.safetensors"))
        ranks = {k.split(".lora_A")[0]: v.shape[0] for k, v in t.items() if k.endswith("lora_A.weight")}
        assert len(ranks) == 4 and max(ranks.values()) == row["rank"]
        pm = _peft_model(out, row)
        inner = pm.base_model.model
        for key, r in ranks.items():
            mod = inner.get_submodule(key.removeprefix("base_model.model."))
            assert mod.r["default"] == r and abs(mod.scaling["default"] - 4 / r) < 1e-9
        try:
            import lolscan.formats  # noqa: F401
        except ImportError:
            continue
        import lolscan

        ad = lolscan.load(str(out / row["path"]))
        assert sorted(ad.ranks) == sorted(ranks.values())


def _tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return Qwen2ForCausalLM(cfg).eval()


@pytest.mark.parametrize("make", [tiny_llama, _tiny_qwen2], ids=["llama-eager", "qwen2-sdpa"])
def test_shared_prefix_cache_scores_like_full_sequences(make, monkeypatch):
    """Reusing the few-shot prefix from the KV cache gives the same option scores, for K adapters."""
    from lolscan.zoo import eval as ev
    from lolscan.zoo.data import McRequest
    from lolscan.zoo.multilora import find_targets, inject

    model = make()
    k = 3
    mods = inject(model, find_targets(model, ["k_proj", "v_proj"]), k=k, r_max=2)
    g = torch.Generator().manual_seed(0)
    for m in mods.values():
        m.lora_A.data = torch.randn(m.lora_A.shape, generator=g)
        m.lora_B.data = 0.3 * torch.randn(m.lora_B.shape, generator=g)
    prefix = [1] + [int(t) for t in torch.randint(3, 64, (20,), generator=g)]
    reqs = []
    for d in range(5):  # letter questions of different lengths, one forward each
        q = prefix + [int(t) for t in torch.randint(3, 64, (3 + 2 * d,), generator=g)]
        reqs.append(McRequest(d, [q] * 4, [[10], [11], [12], [13]], d % 4))
    q = prefix + [40, 41]  # a ranked-classification doc: multi-token continuations
    reqs.append(McRequest(5, [q, q], [[7, 8, 9], [20]], 1))
    made = []
    real = ev._SharedPrefix

    def spy(*a, **kw):
        made.append(real(*a, **kw))
        return made[-1]

    monkeypatch.setattr(ev, "_SharedPrefix", spy)
    full = ev.mc_accuracy(model, k, reqs, batch=2, min_shared_prefix=10**6)
    assert not made
    cached = ev.mc_accuracy(model, k, reqs, batch=2, min_shared_prefix=8)
    assert made and made[0].length == len(prefix)
    assert torch.allclose(full.scores, cached.scores, atol=1e-4)
    assert torch.equal(full.accuracy, cached.accuracy)
    # the adapters really differ, so a cache replayed for the wrong slot would be caught
    assert not torch.allclose(full.scores[0], full.scores[1], atol=1e-3)


def test_compiled_build_matches_the_eager_one(zoo, tmp_path, monkeypatch):
    """`build(compile=True)`: groups of other batch sizes reuse a few compiled graphs (one recompile with
    symbolic sizes, not one per shape), and with dropout 0 the adapters and labels are the eager build's;
    resuming a zoo the other way is refused."""
    import torch._dynamo.utils as dynamo_utils
    from safetensors.torch import load_file

    import lolscan.zoo.multilora as multilora

    root = zoo[0]
    spec = toy_recipe(root, n_loras=8, group_size=1)
    spec["hparams"]["batch_size"] = {"choice": [1, 2, 3, 4, 5]}
    recipe = Recipe.from_dict(spec)
    eager_out, out = tmp_path / "e", tmp_path / "c"
    build(recipe, eager_out, model=tiny_llama(), tokenizer=CharTokenizer(), log=lambda s: None)
    shapes, pad = set(), multilora.pad_batch

    def recording_pad(seqs, pad_id=0, multiple=1):
        ids, lengths = pad(seqs, pad_id, multiple)
        shapes.add(tuple(ids.shape))
        return ids, lengths

    monkeypatch.setattr(multilora, "pad_batch", recording_pad)
    graphs0 = dynamo_utils.counters["stats"]["unique_graphs"]
    rep = build(recipe, out, model=tiny_llama(), tokenizer=CharTokenizer(), compile=True, log=lambda s: None)
    assert rep.complete
    assert len(shapes) >= 5 and dynamo_utils.counters["stats"]["unique_graphs"] - graphs0 <= 3, shapes
    a = sorted(read_zoo_rows(out / "manifest.jsonl"), key=lambda r: r["id"])
    b = sorted(read_zoo_rows(eager_out / "manifest.jsonl"), key=lambda r: r["id"])
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for ra, rb in zip(a, b):
        for key, va in ra.items():
            if isinstance(va, float):
                assert va == pytest.approx(rb[key], abs=1e-4), key
            else:
                assert va == rb[key], key
        ta = load_file(str(out / ra["path"] / "adapter_model.safetensors"))
        tb = load_file(str(eager_out / rb["path"] / "adapter_model.safetensors"))
        assert ta.keys() == tb.keys()
        for k in ta:
            torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=2e-5)
    with pytest.raises(UsageError, match="compile"):
        build(recipe, out, model=tiny_llama(), tokenizer=CharTokenizer(), log=lambda s: None)
    with pytest.raises(UsageError, match="compile"):
        build(recipe, eager_out, model=tiny_llama(), tokenizer=CharTokenizer(), compile=True, log=lambda s: None)


def _rewrite(src: Path, dst: Path, edit) -> None:
    rows = read_zoo_rows(src)
    edit(rows)
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_labels_from_an_earlier_build(zoo, tmp_path, monkeypatch):
    """A rebuild that takes its labels from an earlier manifest trains every group but labels only every
    check_every'th, and writes the earlier manifest byte for byte; zoo.json says where the labels came from."""
    import lolscan.zoo.build as zb
    from lolscan.zoo.known_labels import KnownLabels

    root, recipe, full_out, _ = zoo
    sizes, real = [], zb.mc_accuracy

    def spy(model, k, *a, **kw):
        sizes.append(k)
        return real(model, k, *a, **kw)

    monkeypatch.setattr(zb, "mc_accuracy", spy)
    known = KnownLabels.load(full_out / "manifest.jsonl", check_every=2)
    out = tmp_path / "r"
    rep = build(recipe, out, model=tiny_llama(), tokenizer=CharTokenizer(), labels_from=known, log=lambda s: None)
    assert rep.complete and rep.groups_run == 3 and rep.groups_checked == 2
    assert sizes == [1, 2, 1]  # the base model, then groups 0 and 2 of sizes 2, 2, 1; group 1 not labelled
    assert rep.label_max_diff is not None and rep.label_max_diff <= 1e-6
    assert (out / "manifest.jsonl").read_bytes() == (full_out / "manifest.jsonl").read_bytes()
    assert json.loads((out / "zoo.json").read_text())["labels_from"]["sha256"] == known.sha256
    with pytest.raises(UsageError, match="labels-from"):  # a resume must take its labels the same way
        build(recipe, out, model=tiny_llama(), tokenizer=CharTokenizer(), log=lambda s: None)


def test_labels_from_a_build_stopped_early_rebuilds_its_groups_then_labels_the_rest(zoo, tmp_path):
    """A manifest of a build stopped after some groups (a lease that ran out, a home zoo whose adapters were
    lost) rebuilds those groups at training cost with its labels, and labels the groups it lacks here: the
    zoo comes out as one uninterrupted build."""
    from lolscan.zoo.known_labels import KnownLabels

    root, recipe, full_out, _ = zoo
    full = read_zoo_rows(full_out / "manifest.jsonl")  # in group order: 2, 2, 1
    part = tmp_path / "part"
    build(recipe, part, model=tiny_llama(), tokenizer=CharTokenizer(), max_groups=2, log=lambda s: None)
    part_rows = read_zoo_rows(part / "manifest.jsonl")
    assert [r["id"] for r in part_rows] == [r["id"] for r in full[:4]]
    # the second group's labels are taken, not measured (check_every=2 labels the first only): mark one
    marked = [dict(r, toymc_acc=0.123456) if i == 2 else r for i, r in enumerate(part_rows)]
    (tmp_path / "known.jsonl").write_text("".join(json.dumps(r) + "\n" for r in marked))
    logs: list[str] = []
    out = tmp_path / "again"
    rep = build(recipe, out, model=tiny_llama(), tokenizer=CharTokenizer(),
                labels_from=KnownLabels.load(tmp_path / "known.jsonl", check_every=2), log=logs.append)
    assert rep.complete and rep.groups_run == 3 and rep.groups_checked == 1
    assert any("holds the labels of 2 of the 3 groups left: those at training cost, the other 1 labelled here"
               in line for line in logs)
    rows = read_zoo_rows(out / "manifest.jsonl")
    assert rows[2]["toymc_acc"] == 0.123456  # from the manifest
    assert [r for i, r in enumerate(rows) if i != 2] == [r for i, r in enumerate(full) if i != 2]  # the rest measured
    for r in full:  # the same adapters, the unknown group's included
        assert (out / r["path"] / "adapter_model.safetensors").read_bytes() == \
            (full_out / r["path"] / "adapter_model.safetensors").read_bytes()


def test_labels_from_refuses_what_it_does_not_reproduce(zoo, tmp_path):
    """Another seed's manifest fails before any training; a label a checked group does not reproduce, or
    training losses an unchecked group does not reproduce, fail naming the adapter, and that group leaves
    neither rows nor folders."""
    from lolscan.errors import InputError
    from lolscan.zoo.known_labels import KnownLabels

    root, recipe, full_out, _ = zoo
    rows = read_zoo_rows(full_out / "manifest.jsonl")  # in group order: 2, 2, 1
    other = Recipe.from_dict(toy_recipe(root, seed=8))
    with pytest.raises(InputError, match="lora-00000 has .* this recipe gives"):
        build(other, tmp_path / "o", model=tiny_llama(), tokenizer=CharTokenizer(),
              labels_from=KnownLabels.load(full_out / "manifest.jsonl"), log=lambda s: None)
    assert read_zoo_rows(tmp_path / "o" / "manifest.jsonl") == []
    with pytest.raises(UsageError, match="check-every"):
        KnownLabels.load(full_out / "manifest.jsonl", check_every=0)

    cases = {"toymc_acc": (rows[4]["id"], 2), "train_loss_last": (rows[2]["id"], 1)}  # group 2 checked, 1 not
    for key, (aid, group) in cases.items():
        def edit(rs, aid=aid, key=key):
            next(r for r in rs if r["id"] == aid)[key] += 0.1
        _rewrite(full_out / "manifest.jsonl", tmp_path / f"{key}.jsonl", edit)
        out = tmp_path / key
        with pytest.raises(InputError, match=f"{aid} {key}"):
            build(recipe, out, model=tiny_llama(), tokenizer=CharTokenizer(),
                  labels_from=KnownLabels.load(tmp_path / f"{key}.jsonl", check_every=2), log=lambda s: None)
        done = [r["id"] for r in read_zoo_rows(out / "manifest.jsonl")]
        assert done == [r["id"] for r in rows[: 2 * group]]
        assert sorted(p.name for p in (out / "adapters").iterdir()) == sorted(done)
