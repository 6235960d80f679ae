"""bench/predict_vs_eval.py end to end on CPU: a tiny HF base, a toy zoo of its LoRAs, a GL-net trained on
that zoo for a few steps, 5 questions. Both paths must run and give outputs; the ratio is not asserted."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import load_script
from zoo_toy import save_tiny_hf_base, toy_recipe, write_toy_data

pytest.importorskip("peft")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]


def _bench():
    return load_script("bench/predict_vs_eval.py")


def test_predict_vs_eval_runs_both_paths(tmp_path):
    from lolscan.manifest import read_manifest
    from lolscan.training import TrainOptions, prepare, save_checkpoint, train
    from lolscan.zoo.build import build, load_base
    from lolscan.zoo.recipe import Recipe

    root = tmp_path / "data"
    write_toy_data(root)
    base_dir = tmp_path / "base"
    save_tiny_hf_base(base_dir)
    recipe = Recipe.from_dict(toy_recipe(root, n_loras=7, group_size=4, eval=[]))
    model, tok = load_base({"path": str(base_dir), "dtype": "float32"})
    build(recipe, tmp_path / "zoo", model=model, tokenizer=tok, log=lambda s: None)
    ds = prepare(read_manifest(tmp_path / "zoo" / "manifest.jsonl"), ["val_loss"], progress=False)
    result = train(ds, TrainOptions(arch="glnet", hparams={"d": 4, "hidden": 8}, max_steps=5, progress=False,
                                    threads=1))
    ck = save_checkpoint(ds, result, tmp_path / "ck", name="tiny")
    out = _bench().main(["--base-path", str(base_dir), "--requests", str(root / "requests.jsonl.gz"),
                         "--folder", str(tmp_path / "zoo" / "adapters"), "--n", "6", "--eval-n", "2",
                         "--model", str(ck), "--max-docs", "5", "--dtype", "float32", "--batch", "4",
                         "--repeats", "1", "--json", str(tmp_path / "o.json")])
    assert out["questions"] == 5 and len(out["eval"]) == 2
    for e in out["eval"]:
        assert 0.0 <= e["acc"] <= 1.0 and e["eval_s"] > 0 and e["acc"] * 5 == pytest.approx(round(e["acc"] * 5))
    assert out["eval"][0]["adapter"] != out["eval"][1]["adapter"]
    # lolscan predict scored the same adapter (one row) and the folder's 6; the library path agrees with the CLI
    assert len(out["prediction_cli"]) == 1 and out["folder_predicted"] == 6 and out["folder_n"] == 6
    lib = out["prediction_lib"]["val_loss"]["value"]
    cli = out["prediction_cli"][0]
    assert math.isfinite(lib)
    # (the CLI reads the file torch-free and scores in another batch: float32 rounding apart)
    assert cli["status"] == "ok" and cli["predictions"]["val_loss"]["value"] == pytest.approx(lib, rel=1e-3)
    for key in ("ratio_per_adapter_cli", "ratio_per_adapter_lib", "ratio_folder"):
        assert out[key] > 0
    assert (tmp_path / "o.json").exists()

