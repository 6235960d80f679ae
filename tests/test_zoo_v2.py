"""Issue 17: recipes v2 — lr mixtures, steps in epochs of a per-LoRA capped pool, ``val_loss_own``, stored
per-question correctness; the v1 recipes keep their digests."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from zoo_toy import CharTokenizer, tiny_llama, toy_recipe, write_toy_data

from lolscan.errors import UsageError
from lolscan.zoo.recipe import Recipe, draw, lora_pool, sample_specs

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
V2 = {"qwen2.5-coder-1.5b-kv-r4-v2": "07814357bb80428a", "qwen2.5-coder-1.5b-kv-r4-v2-pilot": "d704673aefa9f462",
      "smollm2-135m-kv-r4-v2": "41056802970a4e0c", "smollm2-135m-kv-r4-v2-pilot": "19a7abacd22ecba6"}
# digests the code before v2 gave the v1 recipes (git 32aea68): the new optional fields must not move them
V1 = {"qwen2.5-coder-1.5b-kv-r4": "2d2d6f840212989b", "qwen2.5-coder-1.5b-kv-r4-lite": "c163b41b7db8bd74",
      "smollm2-135m-kv-r4": "03637f2b0e034573", "smollm2-135m-kv-r4-vl": "1f79b4a4f79f510b"}


def test_v2_recipes_parse_with_stable_digests():
    for name, digest in {**V2, **V1}.items():
        assert Recipe.load(RECIPES / f"{name}.toml").digest() == digest, name
    for model, ev, task in (("qwen2.5-coder-1.5b-kv-r4-v2", "arc_c", "arc_challenge/test_mc_5shot"),
                            ("smollm2-135m-kv-r4-v2", "arc_e", "arc_easy/test_rc_5shot")):
        r, pilot = Recipe.load(RECIPES / f"{model}.toml"), Recipe.load(RECIPES / f"{model}-pilot.toml")
        assert r.n_loras == 2000 and pilot.n_loras == 100
        assert {**pilot.to_dict(), "name": r.name, "n_loras": r.n_loras} == r.to_dict()
        assert r.membership_p == 0.5 and r.max_per_source == 48 and r.store_correct
        assert r.hparams["steps"] == {"epochs": [2, 4]} and "mixture" in r.hparams["lr"]
        assert [(e.name, e.max_docs) for e in r.evals] == [(ev, None)]
        assert r.evals[0].requests == f"oe_eval_tasks/{task}/requests.jsonl.gz"
        assert not any("arc_challenge" in f.lower() or "ARC-Challenge" in f for s in r.sources for f in s.files)
        # the same adapter (index) gets the same settings in the pilot and in the full zoo
        sizes = {s.name: 400 for s in r.sources}
        assert [vars(s) for s in sample_specs(pilot, ["k"], sizes)] == \
               [vars(s) for s in sample_specs(r, ["k"], sizes)[:100]]


def test_lr_mixture_draws_in_range_with_the_stated_weights():
    spec = Recipe.load(RECIPES / "qwen2.5-coder-1.5b-kv-r4-v2.toml").hparams["lr"]
    (w0, c0), (w1, c1) = spec["mixture"]
    lo0, hi0 = c0["loguniform"]
    lo1, hi1 = c1["loguniform"]
    rng = np.random.default_rng(0)
    x = np.array([draw(spec, rng) for _ in range(20000)])
    first = (x >= lo0) & (x <= hi0)
    second = (x >= lo1) & (x <= hi1)
    assert (first | second).all() and not (first & second).any()
    assert abs(second.mean() - w1 / (w0 + w1)) < 0.012  # 5 binomial sd at n = 20,000
    # within a component: log-uniform (the median of log x is the midpoint of the log range)
    assert abs(np.median(np.log(x[first])) - (math.log(lo0) + math.log(hi0)) / 2) < 0.05
    bad = {"mixture": [[0.5, {"loguniform": [1e-4, 1e-3]}], [0.0, {"uniform": [0, 1]}]]}
    with pytest.raises(UsageError, match="mixture"):
        Recipe.from_dict({**toy_recipe(Path("/x")), "hparams": {**toy_recipe(Path("/x"))["hparams"], "lr": bad}})
    with pytest.raises(UsageError, match="unknown distribution"):
        Recipe.from_dict({**toy_recipe(Path("/x")), "hparams": {**toy_recipe(Path("/x"))["hparams"],
                                                                "lr": {"mixture": [[1, {"normal": [0, 1]}]]}}})


def test_steps_in_epochs_of_the_capped_own_pool():
    r = Recipe.load(RECIPES / "smollm2-135m-kv-r4-v2.toml")
    sizes = {s.name: n for s, n in zip(r.sources, [30, 500, 1000, 47, 48, 49, 2000, 700, 90, 60, 300, 5000])}
    specs = sample_specs(r, ["k"], sizes)
    with pytest.raises(UsageError, match="pool"):
        sample_specs(r, ["k"])
    ep = []
    for s in specs[:300]:
        n = sum(min(sizes[src], 48) for src in s.sources)
        e = s.steps * s.batch_size / n
        assert 2 - s.batch_size / n <= e <= 4 + s.batch_size / n  # rounding to whole steps
        ep.append(e)
    assert np.mean(ep) == pytest.approx(3.0, abs=0.1)


def test_lora_pool_is_a_seeded_capped_subset():
    pool = {"a": [[i] for i in range(100)], "b": [[1000 + i] for i in range(10)]}
    r = Recipe.from_dict({**toy_recipe(Path("/x")), "n_loras": 40})
    specs = [s for s in sample_specs(r, ["k"]) if set(s.sources) == {"mm", "sq"}]
    pool = {"mm": pool["a"], "sq": pool["b"]}
    got = [lora_pool(s, pool, 3, 7) for s in specs]
    for g in got:
        assert len(g["mm"]) == 7 and len(g["sq"]) == 7
        assert all(x in pool["mm"] for x in g["mm"]) and len({x[0] for x in g["mm"]}) == 7
    assert len({tuple(x[0] for x in g["mm"]) for g in got}) == len(got)  # each LoRA its own subset
    assert lora_pool(specs[0], pool, 3, 7) == got[0] and lora_pool(specs[0], pool, 4, 7) != got[0]
    assert lora_pool(specs[0], pool, 3, 200) == {"mm": pool["mm"], "sq": pool["sq"]}
    assert lora_pool(specs[0], pool, 3, None) == {"mm": pool["mm"], "sq": pool["sq"]}


@pytest.fixture(scope="module")
def zoo2(tmp_path_factory):
    pytest.importorskip("peft")
    from lolscan.zoo.build import build

    root = tmp_path_factory.mktemp("data2")
    write_toy_data(root)
    d = toy_recipe(root, n_loras=4)
    d["hparams"] = {**d["hparams"], "steps": {"epochs": [0.2, 0.4]}}
    d["data"] = {**d["data"], "max_per_source": 9, "store_correct": True}
    d["eval"] = d["eval"] + [{"name": "toyrc", "requests": "requests.jsonl.gz", "metric": "acc_per_char"}]
    recipe = Recipe.from_dict(d)
    out = root / "zoo"
    build(recipe, out, model=tiny_llama(), tokenizer=CharTokenizer(), log=lambda s: None)
    return root, recipe, out


def test_val_loss_own_and_stored_correctness(zoo2):
    import json

    from peft import PeftModel

    from lolscan.evaluation.noise import unpack_correct
    from lolscan.zoo.build import read_zoo_rows
    from lolscan.zoo.data import build_pool, load_eval, resolve_root

    root, recipe, out = zoo2
    rows = read_zoo_rows(out / "manifest.jsonl")
    info = json.loads((out / "zoo.json").read_text())
    sizes = info["pool_sizes"]
    assert min(sizes.values()) > 9  # the cap bites
    pool = build_pool(recipe, CharTokenizer(), resolve_root(recipe.data_root))
    reqs = load_eval(recipe.evals[0], CharTokenizer(), resolve_root(recipe.data_root))
    for row in rows:
        n_own = {s: min(sizes[s], 9) for s in row["sources"]}
        assert row["pool_n"] == sum(n_own.values())
        assert row["epochs"] == pytest.approx(row["steps"] * row["batch_size"] / row["pool_n"], abs=1e-6)
        # derivable from the per-source columns, weighted by the LoRA's pool counts
        want = sum(row[f"val_loss_{s}"] * n for s, n in n_own.items()) / sum(n_own.values())
        assert row["val_loss_own"] == pytest.approx(want, abs=2e-6)
        bits = unpack_correct(row["toymc_correct"], len(reqs))
        assert bits.mean() == pytest.approx(row["toymc_acc"], abs=1e-6)
    # independent truth for one LoRA: peft's forward, HF's loss, member sources only
    row = max(rows, key=lambda r: len(r["sources"]) < len(recipe.sources))  # one with a strict subset
    pm = PeftModel.from_pretrained(tiny_llama(), str(out / row["path"])).eval()
    own_sum, own_w = 0.0, 0.0
    with torch.no_grad():
        for src in row["sources"]:
            tot = cnt = 0.0
            for s in pool.val[src]:
                ids = torch.tensor([s])
                tot += float(pm(input_ids=ids, labels=ids).loss) * (len(s) - 1)
                cnt += len(s) - 1
            own_sum += tot / cnt * min(sizes[src], 9)
            own_w += min(sizes[src], 9)
        correct, per_char = [], []
        for r, texts in zip(reqs, _continuations(root / "requests.jsonl.gz")):
            opts = []
            for ctx, cont in zip(r.contexts, r.continuations):
                logp = torch.log_softmax(pm(input_ids=torch.tensor([ctx + cont])).logits[0].float(), -1)
                opts.append(sum(float(logp[len(ctx) - 1 + q, t]) for q, t in enumerate(cont)))
            correct.append(int(np.argmax(opts)) == r.gold)
            per_char.append(int(np.argmax([o / len(t) for o, t in zip(opts, texts)])) == r.gold)
    assert row["val_loss_own"] == pytest.approx(own_sum / own_w, abs=1e-4)
    assert row["val_loss_own"] != pytest.approx(row["val_loss"], abs=1e-6)
    assert unpack_correct(row["toymc_correct"], len(reqs)).tolist() == correct
    assert unpack_correct(row["toyrc_correct"], len(reqs)).tolist() == per_char
    assert row["toyrc_acc"] == pytest.approx(np.mean(per_char), abs=1e-6)
    assert "metric" not in recipe.to_dict()["eval"][0] and recipe.to_dict()["eval"][1]["metric"] == "acc_per_char"


def _continuations(path: Path) -> list[list[str]]:
    """Each document's continuation strings in option order, read straight from the request file."""
    import gzip
    import json

    docs: dict = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            q = json.loads(line)
            docs.setdefault(q["doc_id"], {})[q["idx"]] = q["request"]["continuation"]
    return [[opts[i] for i in sorted(opts)] for opts in docs.values()]


def test_v3_is_v2_with_the_pilots_two_changes():
    """Recipe v3 (the Qwen v2 pilot's conclusion): v2 with 40 % damaging learning rates, at most 32 examples
    per member source and the group size fixed at 12 (part of the digest, which is pinned: a resumed build
    across leases must see the same recipe); nothing else moves."""
    v2, v3 = (Recipe.load(RECIPES / f"qwen2.5-coder-1.5b-kv-r4-{v}.toml") for v in ("v2", "v3"))
    assert v3.digest() == "224c89893337c2c4"
    a, b = v2.to_dict(), v3.to_dict()
    changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert changed <= {"name", "group_size", "hparams", "data"}
    assert {k for k in a["hparams"] if a["hparams"][k] != b["hparams"][k]} == {"lr"}
    assert {k for k in a["data"] if a["data"][k] != b["data"].get(k)} == {"max_per_source"}
    assert v3.group_size == 12 and v3.max_per_source == 32 and v3.store_correct
    sizes = {s.name: 1000 for s in v3.sources}
    lr = np.array([s.lr for s in sample_specs(v3, ["k"], sizes)])
    assert lr.size == 2000 and abs((lr >= 1e-3).mean() - 0.40) < 0.055  # 5 binomial sd
    assert lr.min() >= 2e-5 and lr.max() <= 1e-2 and not ((lr > 5e-4) & (lr < 1e-3)).any()
