"""bench/spectra_trees.py: trees on each LoRA's log singular values. Independent truth: the singular values of the
dense ΔW = U Vᵀ (torch.linalg.svdvals), and a target that is a known function of them."""
from __future__ import annotations

import importlib.util
import json
import math

import torch
from helpers import REPO
from safetensors.torch import save_file

import lolscan

spec = importlib.util.spec_from_file_location("spectra_trees", REPO / "bench" / "spectra_trees.py")
spectra_trees = importlib.util.module_from_spec(spec)
spec.loader.exec_module(spectra_trees)


def _peft(folder, gen, scale):
    folder.mkdir(parents=True)
    sd = {}
    for k in range(2):
        sd[f"base_model.model.layers.{k}.q_proj.lora_A.weight"] = scale * torch.randn(3, 12, generator=gen)
        sd[f"base_model.model.layers.{k}.q_proj.lora_B.weight"] = torch.randn(10, 3, generator=gen)
    save_file(sd, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 3, "lora_alpha": 3, "peft_type": "LORA",
                                                            "target_modules": ["q_proj"]}))


def test_log_spectra_are_the_dense_updates_singular_values(tmp_path):
    gen = torch.Generator().manual_seed(0)
    _peft(tmp_path / "a", gen, 1.0)
    ad = lolscan.load(str(tmp_path / "a"))
    want = []
    for name in sorted(ad.layers):
        layer = ad.layers[name]
        want.extend(torch.log(torch.linalg.svdvals(layer.U.double() @ layer.V.double().T)[:3]).tolist())
    got = spectra_trees.log_spectra(ad)
    assert len(got) == 6 and all(math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-9) for g, w in zip(got, want))


def test_trees_read_a_function_of_the_norm(tmp_path, monkeypatch, capsys):
    gen = torch.Generator().manual_seed(1)
    rows = []
    for i in range(60):
        scale = float(torch.empty(1).uniform_(0.1, 3.0, generator=gen))
        _peft(tmp_path / f"l{i}", gen, scale)
        split = "test" if i % 5 == 0 else "train"
        rows.append({"path": f"l{i}", "split": split, "lr": 10 ** -3, "y": math.log(scale)})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "r.json"
    monkeypatch.setattr("sys.argv", ["spectra_trees", str(tmp_path / "m.jsonl"), "-t", "y", "--seeds", "2", "--json", str(out)])
    spectra_trees.main()
    rep = json.loads(out.read_text())["targets"]["y"]
    assert rep["spectra_mean"] > 0.8 and rep["log_total_norm_r2"] > 0.8  # the label is log of the factor's scale
    assert rep["log_lr_r2"] < 0.1  # one lr for every row: the recipe knows nothing
    assert "trees on log spectra" in capsys.readouterr().out
