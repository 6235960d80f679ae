"""Copy a few held-out (test-split) zoo adapters, float16, with their true labels, for models/examples/.

python3 scripts/device/pick_examples.py ZOO OUT_DIR [N [SORT_LABEL]]
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

zoo, out = Path(sys.argv[1]), Path(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 4
rows = [json.loads(x) for x in open(zoo / "manifest.jsonl") if x.strip()]
key = sys.argv[4] if len(sys.argv) > 4 else "val_loss"  # spread the examples over this label
test = sorted((r for r in rows if r["split"] == "test" and not r.get("mixed_rank") and r.get("finite", True)),
              key=lambda r: r[key])
# spread over the label range: lowest, highest and evenly between
pick = [test[round(i * (len(test) - 1) / max(n - 1, 1))] for i in range(n)] if test else []
out.mkdir(parents=True, exist_ok=True)
labels = []
for r in pick:
    src, dst = zoo / r["path"], out / r["id"]
    dst.mkdir(exist_ok=True)
    shutil.copy(src / "adapter_config.json", dst / "adapter_config.json")
    t = load_file(str(src / "adapter_model.safetensors"))
    save_file({k: v.half().contiguous() for k, v in t.items()}, str(dst / "adapter_model.safetensors"),
              metadata={"format": "pt", "lolscan_zoo_id": r["id"], "note": "float16 copy of a float32 zoo adapter"})
    labels.append({**r, "path": r["id"]})
with open(out / "labels.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in labels)
print(f"{len(labels)} examples -> {out}")
