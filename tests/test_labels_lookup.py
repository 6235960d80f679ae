"""`labels.json` lookup (`lolscan.scan.labels.LabelFiles`): the entry beside a file, by name or stem, else the entry
of the folder that holds the file in the `labels.json` beside that folder (diffusers' NAME/pytorch_lora_weights.safetensors)."""
from __future__ import annotations

import json

from lolscan.scan.labels import LabelFiles


def test_a_file_beside_labels_json_then_its_folder_one_level_up(tmp_path):
    lib = tmp_path / "lib"
    (lib / "a").mkdir(parents=True)
    (lib / "b").mkdir()
    (lib / "labels.json").write_text(json.dumps({"a": {"score": 1}, "b": {"score": 2}, "c": {"score": 3}, "d.safetensors": {"score": 4}}))
    (lib / "b" / "labels.json").write_text(json.dumps({"pytorch_lora_weights": {"score": 20}}))
    files = LabelFiles()
    assert files.lookup(str(lib / "a" / "pytorch_lora_weights.safetensors")) == {"score": 1}  # the folder's entry
    assert files.lookup(str(lib / "b" / "pytorch_lora_weights.safetensors")) == {"score": 20}  # its own entry wins
    assert files.lookup(str(lib / "c.safetensors")) == {"score": 3}  # by stem
    assert files.lookup(str(lib / "d.safetensors")) == {"score": 4}  # by name
    assert files.lookup(str(lib / "e" / "x.safetensors")) == {}
    assert files.lookup(str(lib / "a")) == {"score": 1}  # a PEFT folder is the source itself
    assert files.lookup("hf://org/repo/x.safetensors") == {}
