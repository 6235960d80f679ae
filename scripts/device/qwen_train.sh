#!/usr/bin/env bash
# Qwen zoo, device call 18: build on for $1 seconds, build the rank-generalisation sets (ranks: one rank
# per adapter, 1..32; mixed: per-module ranks) for $2 seconds, train the predictors with `lolscan train`,
# score both rank sets with the rank-4 checkpoints, pick examples, run the architecture table with what is
# left (ARCH seeds), and pack what comes back (at most 8 files, 16 MiB each).
set -o pipefail
T0=$(date +%s)
source scripts/device/qwen_env.sh
M=$P/zoo/manifest.jsonl
ls $M >/dev/null || { echo "PERSISTENCE: zoo is gone"; exit 3; }
mkdir -p $OUT/logs
left() { echo $(( ${BUDGET:-585} - ($(date +%s) - T0) )); }
zb() {  # zb RECIPE FOLDER SECONDS: build (resumable) for at most SECONDS
  [ "$3" -gt 45 ] || return
  timeout $3 python3 -m lolscan zoo build $1 $2 --device ${DEV:-cuda} --base-path $P/st --group-size $(cat $P/group_size) \
    --max-minutes $(python3 -c "print(($3 - 20) / 60)") 2>&1 | grep -v "it/s" | tee -a $OUT/logs/build2.log
}
zb $R $P/zoo ${1:-0}
RS=${2:-120}
zb recipes/qwen2.5-coder-1.5b-kv-ranks.toml $P/ranks $(( RS * 3 / 5 ))
zb recipes/qwen2.5-coder-1.5b-kv-mixed.toml $P/mixed $(( RS * 2 / 5 ))
python3 -m lolscan zoo summary $P/zoo --json > $OUT/logs/summary.json
for z in zoo ranks mixed; do cp $P/$z/manifest.jsonl $OUT/logs/${z}_manifest.jsonl; cp $P/$z/zoo.json $OUT/logs/${z}_zoo.json; done
rm -rf $P/ck $P/examples; mkdir -p $P/ck
tr() { local name=$1; shift; local l=$(left); [ $l -gt 40 ] || { echo "skip $name (time)"; return; }
  echo "== $name ($l s left)"; timeout $l python3 -m lolscan train $M "$@" --hparam d=16 --device ${DEV:-cuda} --out $P/ck/$name 2>&1 | grep -v "it/s" | tee -a $OUT/logs/train.log; }
tr qwen2.5-coder-1.5b-arc-c-accuracy --target arc_c_acc
tr qwen2.5-coder-1.5b-val-loss --target val_loss
tr qwen2.5-coder-1.5b-data-sources --target sources
python3 scripts/device/pick_examples.py $P/zoo $P/examples 4 arc_c_acc
for c in $P/ck/*/; do tar -cf $OUT/$(basename $c).tar -C $P/ck $(basename $c); done
tar -cf $OUT/examples.tar -C $P examples
for z in ranks mixed; do for c in arc-c-accuracy val-loss; do
  [ -d $P/ck/qwen2.5-coder-1.5b-$c ] && timeout 60 python3 -m lolscan predict $P/$z/adapters --model $P/ck/qwen2.5-coder-1.5b-$c \
    --device ${DEV:-cuda} --format jsonl > $OUT/logs/pred_${z}_$c.jsonl 2>>$OUT/logs/pred.log
done; done
l=$(left)
[ $l -gt 60 ] && [ -n "$ARCH" ] && timeout $(( l - 12 )) python3 bench/architectures.py $M -t arc_c_acc -t val_loss --seeds ${ARCH} \
  --hparam glnet:d=16 --device ${DEV:-cuda} --markdown --json $OUT/logs/architectures.json 2>&1 | grep -v "it/s" | tee $OUT/logs/architectures.log | tail -20
tar -cf $OUT/logs.tar -C $OUT logs && rm -rf $OUT/logs
ls -la $OUT; echo "call took $(( $(date +%s) - T0 )) s"
