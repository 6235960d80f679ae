#!/usr/bin/env bash
# The whole Qwen2.5-Coder-1.5B lease after the model has arrived, run detached by qwen_start.sh in a copy of
# the repo: rebuild and check the GGUF, convert it, rebuild the 2,000-LoRA zoo at training cost
# (`--labels-from` the fourth lease's manifest, carried as $P/known_manifest.jsonl: every group's training
# losses and every 8th group's labels are checked against it; 497 s on the fifth lease), then what the fifth
# lease left (bench/RESULTS.md): MLP+Dense over 5 seeds on the GPU (22 M ΔW entries per adapter, so its
# max_entries guard is raised: a 1.4 B-parameter first layer, about 25 GB with Adam), and plain GL-net seeds
# 2-4 on this build on the CPU cores (two seeds exist on it; its 5-seed row is from the third lease's build).
# The fifth lease's steps (rank sets scored by the shipped checkpoints, MLP/O-Align/GL-net+asinh seeds,
# compiled groups, GL-net+asinh checkpoints) are done and recorded; `git log` has that version of this script.
# Everything that comes back is in $P/out (qwen_poll.sh fetch); $P/out/progress says how far it got.
set -o pipefail
T0=$(date +%s)
source scripts/device/qwen_env.sh
O=$P/out; L=$O/logs; mkdir -p $L
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $O/progress; }
left_build() { echo $(( ${BUILD_S:-900} - ($(date +%s) - TB) )); }
G=$P/gguf/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
mkdir -p $P/gguf && cat $P/part?? | gunzip > $G || { log "FAILED: gunzip"; exit 4; }
echo "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046  $G" | sha256sum -c || { log "FAILED: sha256"; exit 4; }
rm -f $P/part??
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $P/site $P/*.whl || exit 5
tar -xzf $P/zoodata.tgz -C $P || exit 5
log "model ready"
python3 -m lolscan zoo convert-base $R $P/st --base-path $P/gguf 2>&1 | grep -v "it/s" | tail -3
log "converted"
TB=$(date +%s)
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
# 1. The 2,000-LoRA zoo, labels from the fourth lease's build (checked); measured if that build is not reproduced.
TB=$(date +%s)
Z=$P/zoo
build $R $Z $(left_build) --labels-from $P/known_manifest.jsonl --check-every 8
if grep -q "does not reproduce" $L/cur.log; then
  Z=$P/zoo_measured; log "not reproduced: building with measured labels into $Z"; build $R $Z $(left_build)
fi
n=$(wc -l < $Z/manifest.jsonl); log "zoo: $n adapters; $(grep -h "labels from" $L/build_zoo.log | tail -1)"
cp $Z/zoo.json $L/zoo_zoo.json
M=$Z/manifest.jsonl
A="bench/architectures.py $M -t arc_c_acc -t val_loss --hparam glnet:d=16"
# 2. CPU cores, background: plain GL-net seeds 2-4 on this build (seeds 0-1: the fourth lease's).
for fs in 2:2:7 4:1:7; do IFS=: read f n t <<< "$fs"
  OMP_NUM_THREADS=$t nohup python3 $A --arch glnet --seeds $n --first-seed $f \
    --device cpu --threads $t --json $L/arch_glnet_$f.json > $L/arch_glnet_$f.log 2>&1 &
done
log "architecture table: glnet seeds 2-4 on the CPU cores (background)"
# 3. GPU: MLP+Dense, 5 seeds (flattened ΔW of 56 modules of 256 x 1536 = 22,020,096 inputs).
python3 $A --arch mlp-dense --hparam mlp-dense:max_entries=23000000 --seeds 5 --device cuda --threads 1 \
  --json $L/arch_mlp-dense.json > $L/arch_mlp-dense.log 2>&1; log "architecture mlp-dense (GPU) done"
wait
python3 bench/architectures.py --from-json $L/arch_*.json --markdown > $L/architectures.md 2>&1
log "DONE"
touch $O/DONE
