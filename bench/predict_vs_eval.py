"""Issue 17, item 4: evaluating a LoRA on ARC-Challenge the way a user would, against `lolscan predict` of the
same adapter file, on the same device, in one run — per adapter and for a folder of N.

    python bench/predict_vs_eval.py --base-path qwen-st \
        --requests $LOLSCAN_ZOO_DATA/oe_eval_tasks/arc_challenge/test_mc_5shot/requests.jsonl.gz \
        --folder ZOO/adapters --n 100 --model CHECKPOINT --device cuda --json out.json

Evaluation (no lolscan): peft ``PeftModel.from_pretrained(base, adapter).merge_and_unload()``, then every
question scored lm-eval style — the log-likelihood of each answer letter after the request's full 5-shot
context, requests batched (``--batch``), the options of one question sharing one forward (lm-eval's
context grouping); the scoring is `lolscan.zoo.eval.mc_accuracy` with its shared-prefix cache switched off.
``--scoring cached`` times the zoo builder's cached few-shot prefix instead (a stronger baseline than a user
has). Loading the base model is paid once and reported apart (``base_load_s``); between adapters the base's
weights are restored from a copy (not timed). A folder's evaluation is ``--eval-n`` adapters measured and
the mean multiplied by N (each takes as long: same questions, same model).

Prediction: (1) ``lolscan predict ADAPTER --model M --device D`` as a user runs it, a fresh process
(interpreter start, imports, checkpoint load included), and ``lolscan predict FOLDER`` for the N adapters;
(2) in process, `lolscan.load` + the checkpoint's forward, median of ``--repeats`` (checkpoint loaded once).

Ratios: evaluation time over prediction time, per adapter (CLI and in process) and for the folder.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def _sync(dev: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)


def load_requests(path: str, tokenizer: Any, max_docs: int | None) -> list:
    from lolscan.zoo.data import load_eval
    from lolscan.zoo.recipe import EvalSet

    p = Path(path).resolve()
    return load_eval(EvalSet(name="arc_c", requests=p.name, max_docs=max_docs), tokenizer, p.parent)


def evaluate_merged(base: Any, pristine: dict, adapter: Path, reqs: list, batch: int, cached: bool,
                    dev: torch.device) -> dict[str, Any]:
    """Merge one PEFT adapter into the base with peft and score every request; the base is restored after."""
    from peft import PeftModel

    from lolscan.zoo.eval import mc_accuracy

    sync = _sync(dev)
    sync()
    t0 = time.perf_counter()
    model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    sync()
    t1 = time.perf_counter()
    res = mc_accuracy(model, 1, reqs, batch=batch, min_shared_prefix=16 if cached else 10**9)
    sync()
    t2 = time.perf_counter()
    model.load_state_dict(pristine)  # the merge wrote into the base's weights: undo it (not timed)
    return {"adapter": str(adapter), "merge_s": t1 - t0, "score_s": t2 - t1, "eval_s": t2 - t0,
            "acc": float(res.accuracy[0])}


def predict_cli(targets: list[Path], model: str, device: str, work: Path) -> dict[str, Any]:
    """`lolscan predict TARGETS` in a fresh interpreter, as a user runs it; wall time and the rows written."""
    out = work / f"pred-{len(list(work.iterdir()))}.jsonl"
    cmd = [sys.executable, "-m", "lolscan", "predict", *map(str, targets), "--model", model, "--device", device,
           "--format", "jsonl", "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"lolscan predict failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {"seconds": seconds, "rows": rows}


def predict_lib(model: str, adapter: Path, device: str, repeats: int) -> dict[str, Any]:
    """`lolscan.load` + the checkpoint's forward in this process (checkpoint loaded once, not timed)."""
    import lolscan
    from lolscan.checkpoint import load_checkpoint, resolve

    dev = torch.device(device)
    sync = _sync(dev)
    ck = load_checkpoint(resolve(model), device=device)
    times, pred = [], None
    for _ in range(repeats + 1):  # the first is a warm-up
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            pred = ck.predict([lolscan.load(str(adapter))])
        sync()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times[1:]), "prediction": pred[0] if pred else None}


def adapters_in(folder: Path, n: int) -> list[Path]:
    found = sorted(p.parent for p in folder.glob("*/adapter_config.json"))
    if not found:
        raise SystemExit(f"{folder}: no PEFT adapter folders in it")
    return found[:n]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from lolscan.zoo.build import load_base

    dev = torch.device(args.device)
    adapters = adapters_in(Path(args.folder), args.n) if args.folder else [Path(args.adapter)]
    one = Path(args.adapter) if args.adapter else adapters[0]
    t0 = time.perf_counter()
    base, tok = load_base({"path": args.base_path, "dtype": args.dtype}, device=args.device)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                           "scoring": "zoo-cached-prefix" if args.cached else "lm-eval-style full contexts",
                           "base_load_s": time.perf_counter() - t0}
    reqs = load_requests(args.requests, tok, args.max_docs)
    out["questions"] = len(reqs)
    pristine = {k: v.detach().clone() for k, v in base.state_dict().items()}
    from lolscan.zoo.eval import mc_accuracy

    mc_accuracy(base, 1, reqs[: args.batch], batch=args.batch)  # warm-up (kernels, allocator), not timed
    evals = [evaluate_merged(base, pristine, a, reqs, args.batch, args.cached, dev)
             for a in [one] + [a for a in adapters[: args.eval_n] if a != one]][: max(1, args.eval_n)]
    del base, pristine
    out["eval"] = evals
    eval_s = evals[0]["eval_s"]
    mean_eval = statistics.mean(e["eval_s"] for e in evals)
    work = Path(tempfile.mkdtemp(prefix="predict_vs_eval-"))
    try:
        cli_one = predict_cli([one], args.model, args.device, work)
        lib_one = predict_lib(args.model, one, args.device, args.repeats)
        out.update(eval_s=eval_s, predict_cli_s=cli_one["seconds"], predict_lib_s=lib_one["seconds"],
                   prediction_cli=cli_one["rows"], prediction_lib=lib_one["prediction"],
                   ratio_per_adapter_cli=eval_s / cli_one["seconds"], ratio_per_adapter_lib=eval_s / lib_one["seconds"])
        if args.folder:
            whole = len(adapters_in(Path(args.folder), 10**9)) == len(adapters)
            cli_all = predict_cli([Path(args.folder)] if whole else adapters, args.model, args.device, work)
            out.update(folder_n=len(adapters), folder_predicted=len(cli_all["rows"]),
                       folder_eval_s_estimated=mean_eval * len(adapters), eval_measured_n=len(evals),
                       folder_predict_cli_s=cli_all["seconds"],
                       ratio_folder=mean_eval * len(adapters) / cli_all["seconds"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-path", required=True, help="the base model, a Hugging Face folder")
    ap.add_argument("--requests", required=True, help="OLMES requests (jsonl[.gz]), e.g. ARC-C test_mc_5shot")
    ap.add_argument("--adapter", help="one PEFT adapter folder (default: the folder's first)")
    ap.add_argument("--folder", help="a folder of PEFT adapter folders (a zoo's adapters/)")
    ap.add_argument("--n", type=int, default=100, help="adapters of --folder to predict")
    ap.add_argument("--eval-n", type=int, default=3, help="adapters really evaluated (the folder's time is extrapolated)")
    ap.add_argument("--model", required=True, help="lolscan checkpoint (name or folder)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-docs", type=int, default=None, help="first N questions only (tests)")
    ap.add_argument("--cached", action="store_true", help="score with the cached few-shot prefix")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if not (args.adapter or args.folder):
        ap.error("give --adapter, --folder or both")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    out = run(args)
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return out


if __name__ == "__main__":
    main()
