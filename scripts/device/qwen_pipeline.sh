#!/usr/bin/env bash
# The whole Qwen2.5-Coder-1.5B lease after the model has arrived, run detached by qwen_start.sh in a copy of
# the repo: rebuild and check the GGUF, convert it, build the 2,000-LoRA zoo (with measured labels, about
# 900 s, unless an earlier build's manifest was carried: the seventh lease's is bench/results/qwen2000d_manifest.jsonl.gz),
# then the whole five-architecture table on this one build, 5 seeds each: MLP+Dense first on the GPU (22 M ΔW
# entries per adapter, so its max_entries guard is raised: a 1.4 B-parameter first layer, about 25 GB with
# Adam; the one row no lease had run), then MLP and MLP+O-Align on the GPU; plain GL-net, MLP+SVD and GL-net +
# asinh on the CPU cores meanwhile. The shipped checkpoints are scored on the rebuilt test split. The fifth
# lease's version (rank sets, compiled groups, GL-net+asinh checkpoints) is in `git log`.
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
A="bench/architectures.py $M -t arc_c_acc -t val_loss --hparam glnet:d=16"
# 2. CPU cores, background: plain GL-net (5 seeds over 3 processes), MLP+SVD (5), then GL-net + asinh.
cpu() {  # cpu NAME FIRST N THREADS [architectures.py options]
  local name=$1 f=$2 n=$3 t=$4; shift 4
  OMP_NUM_THREADS=$t python3 $A "$@" --seeds $n --first-seed $f --device cpu --threads $t \
    --json $L/arch_${name}_$f.json > $L/arch_${name}_$f.log 2>&1; log "cpu: $name seeds $f.. done"; }
for fn in 0:2 2:2 4:1; do IFS=: read f n <<< "$fn"  # first seed : seeds, 3 threads each
  ( cpu glnet $f $n 3 --arch glnet; cpu glnet-asinh $f $n 3 --arch glnet --name glnet-asinh --hparam glnet:squash=asinh ) &
done
( cpu mlp-svd 0 5 3 --arch mlp-svd ) &
log "architecture table: glnet, mlp-svd, glnet-asinh on the CPU cores (background)"
# 3. GPU: MLP+Dense, 5 seeds (flattened ΔW of 56 modules of 256 x 1536 = 22,020,096 inputs), then the shipped
# checkpoints on the test split, then MLP and MLP+O-Align side by side.
# On an H200 (sixth lease, synthetic adapters of this shape) a seed takes 35-60 s and 36-47 GiB; at the table's
# lr 1e-3 a 22 M fan-in blows up (R2 about -3000), so a variant at lr 1e-5 follows.
D="--arch mlp-dense --hparam mlp-dense:max_entries=23000000 --device cuda --threads 1"
timeout 330 python3 $A $D --seeds 5 --json $L/arch_mlp-dense.json > $L/arch_mlp-dense.log 2>&1
log "architecture mlp-dense (GPU) done (rc $?)"
for c in models/qwen2.5-coder-1.5b-*/; do
  python3 -m lolscan eval $M --model $c --split test --device cuda --format json > $L/eval_shipped_$(basename $c).json 2>>$L/eval.log
done
log "shipped checkpoints evaluated on the test split"
timeout 200 python3 $A $D --name mlp-dense-lr1e-5 --lr 1e-5 --seeds 3 --json $L/arch_mlp-dense-lr1e-5.json \
  > $L/arch_mlp-dense-lr1e-5.log 2>&1; log "architecture mlp-dense lr 1e-5 (GPU) done (rc $?)"
for a in mlp mlp-oalign; do
  ( python3 $A --arch $a --seeds 5 --device cuda --threads 1 --json $L/arch_$a.json > $L/arch_$a.log 2>&1
    log "architecture $a (GPU) done" ) &
done
wait
python3 bench/architectures.py --from-json $L/arch_*.json --markdown > $L/architectures.md 2>&1
log "DONE"
touch $O/DONE
