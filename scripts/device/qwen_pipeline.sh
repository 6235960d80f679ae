#!/usr/bin/env bash
# The whole Qwen2.5-Coder-1.5B lease after the model has arrived, run detached by qwen_start.sh in a copy of
# the repo: rebuild and check the GGUF, convert it, then what the fourth lease left (bench/RESULTS.md), in
# order of priority: the rank-generalisation sets, built and scored by the shipped rank-4 checkpoints (paper
# Fig. 4); the 2,000-LoRA zoo again, at training cost (`--labels-from` the fourth lease's manifest, carried
# as $P/known_manifest.jsonl: every group's training losses and every 8th group's labels are checked against
# it); on the CPU cores GL-net + asinh over 5 seeds; on the GPU the shipped checkpoints on the test split, MLP
# and MLP+O-Align over 5 seeds, a timed `zoo build --compile` of the same recipe (3 groups), and GL-net +
# asinh checkpoints. The repo copy must hold models/ (the shipped checkpoints are used): start it in a call
# whose tree has models/*.safetensors, not in a chunk-carrying call. Everything that comes back is in $P/out
# (qwen_poll.sh fetch); $P/out/progress says how far it got.
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
# 1. Rank generalisation: rank sets built (one rank per adapter, 1-32; per-module mixed ranks), scored by the
# shipped checkpoints, which were trained on rank 4 only.
build recipes/qwen2.5-coder-1.5b-kv-ranks.toml $P/ranks 170  # 2 of 3 groups (52 s each at ranks up to 32)
build recipes/qwen2.5-coder-1.5b-kv-mixed.toml $P/mixed 100  # 1 of 2 groups
for z in ranks mixed; do cp $P/$z/manifest.jsonl $L/${z}_manifest.jsonl; cp $P/$z/zoo.json $L/${z}_zoo.json; done
log "rank sets: $(wc -l < $P/ranks/manifest.jsonl) ranks, $(wc -l < $P/mixed/manifest.jsonl) mixed"
for z in ranks mixed; do for c in models/qwen2.5-coder-1.5b-*/; do c=${c%/}
  timeout 60 python3 -m lolscan predict $P/$z/adapters --model $c --device cuda --format jsonl > $L/pred_${z}_$(basename $c).jsonl 2>>$L/pred.log
done; done
log "rank sets scored"
# 2. The 2,000-LoRA zoo, labels from the fourth lease's build (checked); measured if that build is not reproduced.
TB=$(date +%s)
Z=$P/zoo
build $R $Z $(left_build) --labels-from $P/known_manifest.jsonl --check-every 8
if grep -q "does not reproduce" $L/cur.log; then
  Z=$P/zoo_measured; log "not reproduced: building with measured labels into $Z"; build $R $Z $(left_build)
fi
n=$(wc -l < $Z/manifest.jsonl); log "zoo: $n adapters; $(grep -h "labels from" $L/build_zoo.log | tail -1)"
python3 -m lolscan zoo summary $Z --json > $L/summary.json
cp $Z/manifest.jsonl $L/zoo_manifest.jsonl; cp $Z/zoo.json $L/zoo_zoo.json
M=$Z/manifest.jsonl
mkdir -p $P/ck
tr() { local name=$1; shift
  python3 -m lolscan train $M "$@" --device cuda --out $P/ck/$name 2>&1 | grep -v "it/s" >> $L/train.log
  [ -d $P/ck/$name ] && tar -cf $O/$name.tar -C $P/ck $name && log "checkpoint $name"; }
# 3. CPU cores, in the background from here to the end: GL-net with asinh-squashed invariants, 5 seeds in two
# processes (one seed on the fourth lease: ARC-C R2 0.852, tau 0.629, against GL-net's 0.56 / 0.13).
A="bench/architectures.py $M -t arc_c_acc -t val_loss --hparam glnet:d=16"
for fs in 0:3:7 3:2:7; do IFS=: read f n t <<< "$fs"
  OMP_NUM_THREADS=$t nohup python3 $A --arch glnet --name glnet-asinh --hparam glnet:squash=asinh --seeds $n --first-seed $f \
    --device cpu --threads $t --json $L/arch_glnet-asinh_$f.json > $L/arch_glnet-asinh_$f.log 2>&1 &
done
log "architecture table: glnet-asinh seeds 0-4 on the CPU cores (background)"
# 4. GPU: the shipped checkpoints on the test split (same recipe and seed as their zoo), then the raw-factor
# MLPs of the table (25.7 M parameters on Qwen; 2-3 minutes a run on CPU threads).
for c in models/qwen2.5-coder-1.5b-*/; do
  python3 -m lolscan eval $M --model $c --split test --device cuda --format json > $L/eval_shipped_$(basename $c).json 2>>$L/eval.log
done
log "shipped checkpoints evaluated on the test split"
for a in mlp mlp-oalign; do  # side by side: each leaves most of the GPU idle
  ( python3 $A --arch $a --seeds 5 --device cuda --threads 1 --json $L/arch_$a.json > $L/arch_$a.log 2>&1
    log "architecture $a (GPU) done" ) &
  gpu_jobs="$gpu_jobs $!"
done
wait $gpu_jobs
# 5. `zoo build --compile` on the real recipe: 3 groups, group times against the eager build's log above.
TB=$(date +%s); BUILD_S=300
build $R $P/zoo_compiled $(left_build) --compile --max-groups 3; log "compiled build: $(tail -1 $L/build_zoo_compiled.log)"
# 6. GL-net + asinh checkpoints, to set against the shipped MLP+SVD ones on the validation split.
tr qwen2.5-coder-1.5b-arc-c-accuracy-glnet-asinh --target arc_c_acc --hparam d=16 --hparam squash=asinh
tr qwen2.5-coder-1.5b-val-loss-glnet-asinh --target val_loss --hparam d=16 --hparam squash=asinh
wait
python3 bench/architectures.py --from-json $L/arch_*.json --markdown > $L/architectures.md 2>&1
log "DONE"
touch $O/DONE
