"""models/examples-mix: held-out LoRAs of the mix base's two zoos with the labels a bundled checkpoint predicts
for their kind (models/examples-mix/README.md says which and why).

python3 scripts/device/pick_mix_examples.py OUT [CLASS_ZOO [FONT_ZOO]]   (defaults: the home zoos, /work/kit/mixzoo)
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
CZ = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/work/kit/mixzoo/zoo")
FZ = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("/work/kit/mixzoo/zoo_fonts")
FACTS = ("split", "lr", "steps", "batch_size", "weight_decay", "rank", "alpha", "style", "prompt_template")
labels = {}
for zoo, pre, key, keep in ((CZ, "classes", "n_classes", ("classes", "n_classes", "dataset_size", "clip_score")),
                       (FZ, "font", "clip_score", ("attributes",))):
    rows = sorted((json.loads(l) for l in open(zoo / "manifest.jsonl") if l.strip()), key=lambda r: r[key])
    test = [r for r in rows if r["split"] == "test" and r.get("finite", True)]
    if pre == "classes":  # the quartiles of the class count (the extremes are 1 and 9 classes, where the all-absent or all-present guess is 9/10 right)
        by_clip = sorted(test, key=lambda r: r["clip_score"])
        picks = (test[round(0.25 * (len(test) - 1))], test[round(0.75 * (len(test) - 1))], by_clip[0], by_clip[-1])
    else:
        picks = (test[0], next(r for r in reversed(test) if r.get("attributes", r["classes"]) != test[0].get("attributes", test[0]["classes"])))
    for r in picks:
        d = out / f"{pre}-{r['id']}"; d.mkdir(exist_ok=True)
        shutil.copy(zoo / r["path"], d / "pytorch_lora_weights.safetensors")
        labels[d.name] = {k: r[k] for k in keep} | {"_zoo": {"zoo": zoo.name, "id": r["id"]} | {k: r[k] for k in FACTS if k in r}}
(out / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
print(json.dumps({k: {kk: v[kk] for kk in v if kk != "_zoo"} for k, v in labels.items()}))
