#!/usr/bin/env bash
# Device call 4: train the predictor checkpoints on the zoo with `lolscan train`, pick example adapters,
# pack everything that comes back (at most 8 files).
set -o pipefail
T0=$(date +%s)
P=/root/zp
M=$P/zoo/manifest.jsonl
ls $M || { echo "PERSISTENCE: zoo is gone"; exit 3; }
export PYTHONPATH=$P/site PYTHONUNBUFFERED=1
python3 -m lolscan zoo summary $P/zoo --json > $OUT/summary.json
cp $M $OUT/manifest.jsonl; cp $P/zoo/zoo.json $OUT/zoo.json
rm -rf $P/ck $P/examples; mkdir -p $P/ck
tr() { local name=$1; shift; local left=$(( ${BUDGET:-560} - ($(date +%s) - T0) )); [ $left -gt 30 ] || { echo "skip $name (time)"; return; }
  echo "== $name ($left s left)"; timeout $left python3 -m lolscan train $M "$@" --device cuda --out $P/ck/$name 2>&1 | tee -a $OUT/train.log; }
tr smollm2-val-loss --target val_loss --arch glnet
tr smollm2-data-sources --target sources --arch glnet
tr smollm2-arc-c-accuracy --target arc_c_acc --arch glnet
tr smollm2-arc-c-gold-logprob --target arc_c_gold_logprob --arch glnet
python3 scripts/device/pick_examples.py $P/zoo $P/examples 4
tar -cf $OUT/checkpoints.tar -C $P ck
tar -cf $OUT/examples.tar -C $P examples
[ -n "$ALL" ] && tr cmp-val-loss --target val_loss --arch all
ls -la $OUT
