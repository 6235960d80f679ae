#!/usr/bin/env bash
# Device, sourced by qwen_pilot.sh and qwen_v3.sh (which define $L, $O and log): `qwen_analyses MANIFEST QUESTIONS`
# runs the label analyses of a Qwen zoo's manifest into $L — bench/label_noise.py (arc_c_acc, binomial and
# bootstrap, every LoRA and lr ≤ 1e-3) and bench/hp_baseline.py (arc_c_acc, val_loss, val_loss_own; side by side:
# ≈ 50 s each at 2,000 rows on one dev-CPU core) — then puts both ceilings into the progress log.
qwen_analyses() {
  local M=$1 Q=$2 h t
  for h in "" 1e-3; do
    python3 bench/label_noise.py $M --label arc_c_acc --questions $Q --bootstrap 1000 ${h:+--max-lr $h} \
      > $L/label_noise_arc_c${h:+_healthy}.json 2>&1; log "label_noise${h:+ (lr ≤ $h)} rc $?"
  done
  for t in arc_c_acc val_loss val_loss_own; do
    ( python3 bench/hp_baseline.py $M -t $t $( [ $t = arc_c_acc ] && echo --questions $Q ) --markdown \
      > $L/hp_baseline_$t.md 2>&1; log "hp_baseline $t rc $?" ) &
  done
  wait
  python3 - $L <<'PY' | tee -a $O/progress
import json, sys
for name in ("label_noise_arc_c", "label_noise_arc_c_healthy"):
    try:
        d = json.load(open(f"{sys.argv[1]}/{name}.json"))
        b, s = d["binomial"], d.get("bootstrap", {})
        print(f"{name}: n {d['n']}, label sd {b['label_var'] ** 0.5:.4f}, binomial sd {b['noise_sd']:.4f}, "
              f"ceiling {b['ceiling']:.3f}, bootstrap {s.get('ceiling', float('nan')):.3f} (shared {s.get('ceiling_shared', float('nan')):.3f})")
    except Exception as exc:  # a failed run is in its own file
        print(f"{name}: {exc!r}")
PY
}
