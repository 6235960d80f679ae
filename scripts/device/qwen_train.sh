#!/usr/bin/env bash
# Qwen zoo, device call 18: optionally build on for $1 seconds, then train the predictors with
# `lolscan train`, time predict vs a real ARC-C evaluation, pick examples, and pack what comes back
# (at most 8 files, 16 MiB each).
set -o pipefail
T0=$(date +%s)
source scripts/device/qwen_env.sh
M=$P/zoo/manifest.jsonl
ls $M >/dev/null || { echo "PERSISTENCE: zoo is gone"; exit 3; }
mkdir -p $OUT/logs
if [ "${1:-0}" -gt 60 ]; then
  timeout $1 python3 -m lolscan zoo build $R $P/zoo --device ${DEV:-cuda} --base-path $P/st --group-size $(cat $P/group_size) \
    --max-minutes $(python3 -c "print(($1 - 30) / 60)") 2>&1 | grep -v "it/s" | tee $OUT/logs/build2.log
fi
python3 -m lolscan zoo summary $P/zoo --json > $OUT/logs/summary.json
cp $M $OUT/manifest.jsonl; cp $P/zoo/zoo.json $OUT/logs/zoo.json
rm -rf $P/ck $P/examples; mkdir -p $P/ck
tr() { local name=$1; shift; local left=$(( ${BUDGET:-570} - ($(date +%s) - T0) )); [ $left -gt 40 ] || { echo "skip $name (time)"; return; }
  echo "== $name ($left s left)"; timeout $left python3 -m lolscan train $M "$@" --hparam d=16 --device ${DEV:-cuda} --out $P/ck/$name 2>&1 | grep -v "it/s" | tee -a $OUT/logs/train.log; }
tr qwen2.5-coder-1.5b-arc-c-accuracy --target arc_c_acc
tr qwen2.5-coder-1.5b-val-loss --target val_loss
tr qwen2.5-coder-1.5b-data-sources --target sources
python3 scripts/device/pick_examples.py $P/zoo $P/examples 4 arc_c_acc
for c in $P/ck/*/; do tar -cf $OUT/$(basename $c).tar -C $P/ck $(basename $c); done
tar -cf $OUT/examples.tar -C $P examples
EX=$(ls -d $P/examples/lora-* | head -1)
ID=$(basename $EX)
grep "\"$ID\"" $M > $P/ex_label.json
left=$(( ${BUDGET:-570} - ($(date +%s) - T0) ))
[ $left -gt 60 ] && timeout $left python3 bench/arc_vs_predict.py $R $P/zoo/adapters/$ID --model $P/ck/qwen2.5-coder-1.5b-arc-c-accuracy \
  --base-path $P/st --device ${DEV:-cuda} --label $P/ex_label.json --json $OUT/logs/arc_vs_predict.json 2>&1 | grep -v "it/s" | tail -25
left=$(( ${BUDGET:-570} - ($(date +%s) - T0) ))
[ $left -gt 90 ] && [ -n "$ARCH" ] && timeout $(( left - 15 )) python3 bench/architectures.py $M -t arc_c_acc -t val_loss --seeds ${ARCH} \
  --hparam glnet:d=16 --device ${DEV:-cuda} --markdown --json $OUT/logs/architectures.json 2>&1 | grep -v "it/s" | tail -20
tar -cf $OUT/logs.tar -C $OUT logs && rm -rf $OUT/logs
ls -la $OUT
