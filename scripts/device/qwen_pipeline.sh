#!/usr/bin/env bash
# The whole Qwen2.5-Coder-1.5B lease after the model has arrived, run detached by qwen_start.sh in a copy of
# the repo. From the start, on 8 CPU cores: the synthetic invariant suite (bench/invariants.py, every
# architecture, 5 seeds, 200/1,000/100 training adapters) into $O/suite.json.gz. Meanwhile: rebuild and check
# the GGUF, convert it, build the 2,000-LoRA zoo (at training cost from the committed manifest
# bench/results/qwen2000d_manifest.jsonl.gz, about 500 s), then GL-net as `lolscan train` now trains it
# (spectral invariants, the products searched on validation, min 500 / max 2,000 steps, lr cut on plateaus)
# and MLP+SVD under the same trainer, one model per target, 5 seeds, on the GPU, and the three Qwen checkpoints
# retrained that way ($O/ck_NAME.tar, brought back by `qwen_poll.sh WAIT fetch`). The five-architecture
# version of the seventh lease is in `git log`.
# Everything that comes back is in $P/out (qwen_poll.sh fetch); $P/out/progress says how far it got.
set -o pipefail
T0=$(date +%s)
source scripts/device/qwen_env.sh
O=$P/out; L=$O/logs; mkdir -p $L
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $O/progress; }
left_build() { echo $(( ${BUILD_S:-900} - ($(date +%s) - TB) )); }
G=$P/gguf/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
# 0. CPU cores: the invariant suite, all lease long (its JSON is rewritten every 10 runs, fetched by every poll)
[ "${SUITE:-1}" = 1 ] && ( OMP_NUM_THREADS=1 python3 bench/invariants.py --sizes 200 1000 100 --seeds 5 --workers ${SUITE_WORKERS:-8} \
    --json $O/suite.json.gz > $L/suite.log 2>&1; log "invariant suite done (rc $?)" ) &
# PILOT=1 SMALL=1 DEV=cpu: the v2 pilot's CPU rehearsal, without the GGUF (qwen_pilot.sh makes a tiny model)
[ "${PILOT:-0}${SMALL:-0}" = 11 ] && T0=$T0 exec bash scripts/device/qwen_pilot.sh
# V3=1 SMALL=1 DEV=cpu: likewise for the v3 zoo (qwen_v3.sh)
[ "${V3:-0}${SMALL:-0}" = 11 ] && T0=$T0 exec bash scripts/device/qwen_v3.sh
mkdir -p $P/gguf && cat $P/part?? | gunzip > $G || { log "FAILED: gunzip"; exit 4; }
echo "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046  $G" | sha256sum -c || { log "FAILED: sha256"; exit 4; }
rm -f $P/part??
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $P/site $P/*.whl || exit 5
tar -xzf $P/zoodata.tgz -C $P || exit 5
log "model ready"
python3 -m lolscan zoo convert-base $R $P/st --base-path $P/gguf 2>&1 | grep -v "it/s" | tail -3
log "converted"
# PILOT=1: issue 17's Qwen v2 pilot (100 LoRAs, measured labels, label noise, recipe-only baseline) instead of
# everything below
[ "${PILOT:-0}" = 1 ] && T0=$T0 exec bash scripts/device/qwen_pilot.sh
# V3=1: one lease of issue 17's v3 zoo (2,000 LoRAs over about six leases, each resuming the last and packing
# its adapters for the trip home) instead of everything below
[ "${V3:-0}" = 1 ] && T0=$T0 exec bash scripts/device/qwen_v3.sh
build() {  # build RECIPE FOLDER SECONDS [zoo build options]: resumable; on "out of memory" again at half the group size
  local r=$1 z=$2 g=${GROUP:-48} s end=$(( $(date +%s) + $3 )); shift 3
  for attempt in 1 2 3; do
    s=$(( end - $(date +%s) )); [ "$s" -gt 40 ] || return
    python3 -m lolscan zoo build $r $z --device cuda --base-path $P/st --group-size $g \
      --max-minutes $(python3 -c "print(($s - 15) / 60)") "$@" > $L/cur.log 2>&1
    local rc=$?; grep -v "it/s" $L/cur.log >> $L/build_$(basename $z).log
    [ $rc = 0 ] && return
    grep -q "out of memory" $L/cur.log || { log "build $z failed (rc $rc): $(tail -1 $L/cur.log)"; return $rc; }
    g=$(( g / 2 )); log "out of memory: $z again at group size $g"
  done
}
# 1. The 2,000-LoRA zoo: at training cost when an earlier build's manifest was carried as $P/known_manifest.jsonl
# (every group's training losses and every 8th group's labels checked against it; 497 s on the fifth lease),
# else with measured labels (884 s on the sixth).
TB=$(date +%s)
Z=$P/zoo
[ -e $P/known_manifest.jsonl ] || zcat bench/results/qwen2000d_manifest.jsonl.gz > $P/known_manifest.jsonl
if [ -e $P/known_manifest.jsonl ]; then
  build $R $Z $(left_build) --labels-from $P/known_manifest.jsonl --check-every 8
  if grep -q "does not reproduce" $L/cur.log; then
    Z=$P/zoo_measured; log "not reproduced: building with measured labels into $Z"; build $R $Z $(left_build)
  fi
else
  build $R $Z $(left_build)
fi
n=$(wc -l < $Z/manifest.jsonl); log "zoo: $n adapters"
python3 -m lolscan zoo summary $Z --json > $L/summary.json
cp $Z/zoo.json $L/zoo_zoo.json; gzip -c $Z/manifest.jsonl > $O/.m.gz && mv $O/.m.gz $O/zoo_manifest.jsonl.gz; sha256sum $Z/manifest.jsonl | tee -a $O/progress
M=$Z/manifest.jsonl
# 2. GPU: one model per target, 5 seeds; GL-net seeds in parallel processes (small models leave the GPU idle).
gpu() {  # gpu NAME TARGET SEEDS... [-- architectures.py options]
  local name=$1 t=$2; shift 2
  timeout ${ARCH_S:-700} python3 bench/architectures.py $M -t $t --steps 2000 --device cuda --threads 1 "$@" \
    --json $L/arch_${name}_${t}.json > $L/arch_${name}_${t}.log 2>&1; log "gpu: $name $t done (rc $?)"; }
for s in 0 1 2 3 4; do
  ( for t in arc_c_acc val_loss; do gpu glnet-s$s $t --arch glnet --seeds 1 --first-seed $s; done ) &
done
( for t in arc_c_acc val_loss; do gpu mlp-svd $t --arch mlp-svd --seeds 5; done ) &
# 3. Checkpoints as `lolscan train` makes them now (default architecture, one per target), side by side.
ckpt() {  # ckpt NAME TARGET [train options]
  local n=$1 t=$2; shift 2
  timeout ${CKPT_S:-700} python3 -m lolscan train $M -t $t --out $O/ck/$n --device cuda --threads 1 --steps 2000 --no-progress \
    --format json "$@" > $L/train_$n.json 2> $L/train_$n.log
  log "checkpoint $n (rc $?)"; tar -cf $O/ck_$n.tar -C $O/ck $n 2>/dev/null; }
Q=qwen2.5-coder-1.5b
ckpt $Q-arc-c-accuracy arc_c_acc &
ckpt $Q-val-loss val_loss &
ckpt $Q-data-sources sources &
log "GL-net (5 processes), MLP+SVD and 3 checkpoints on the GPU"
wait_gpu() { while pgrep -f "bench/architectures.py" > /dev/null; do sleep 5; done; }
wait_gpu
for t in arc_c_acc val_loss; do
  python3 bench/architectures.py --from-json $L/arch_*_${t}.json --markdown > $L/architectures_$t.md 2>&1
done
log "tables written"
wait
log "DONE"
touch $O/DONE
