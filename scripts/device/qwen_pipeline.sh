#!/usr/bin/env bash
# The whole Qwen2.5-Coder-1.5B lease after the model has arrived, run detached by qwen_start.sh in a copy of
# the repo: rebuild and check the GGUF, convert it, build the rank-4 zoo (at most $BUILD_S seconds), train
# the three checkpoints, pick the bundled examples, build the rank-generalisation sets and score them, and
# run the architecture table (GL-net and MLP+SVD on the CPU cores while the GPU builds and scores the rank
# sets, since on the GPU runs in other processes would be time-sliced against the build; MLP and MLP+O-Align
# on the GPU after). The repo copy must hold models/ (the shipped checkpoints are evaluated on the new zoo):
# start it in a call whose tree has models/*.safetensors, not in a chunk-carrying call. Everything that comes back is in $P/out (qwen_poll.sh fetch);
# $P/out/progress says how far it got.
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
for i in $(seq 60); do [ -e $O/bench.done ] && break; sleep 1; done  # the multi-LoRA timings share the GPU
[ -e $O/bench.done ] || { log "benchmarks still running: stopped"; pkill -f bench/zoo_throughput.py; sleep 3; }
TB=$(date +%s)
build() {  # build RECIPE FOLDER SECONDS: resumable; on "out of memory" again at half the group size
  local g=${GROUP:-48} s end=$(( $(date +%s) + $3 ))
  for attempt in 1 2 3; do
    s=$(( end - $(date +%s) )); [ "$s" -gt 40 ] || return
    python3 -m lolscan zoo build $1 $2 --device cuda --base-path $P/st --group-size $g \
      --max-minutes $(python3 -c "print(($s - 15) / 60)") > $L/cur.log 2>&1
    local rc=$?; grep -v "it/s" $L/cur.log >> $L/build_$(basename $2).log
    [ $rc = 0 ] && return
    grep -q "out of memory" $L/cur.log || { log "build $2 failed (rc $rc)"; return; }
    g=$(( g / 2 )); log "out of memory: $2 again at group size $g"
  done
}
build $R $P/zoo $(left_build)
n=$(wc -l < $P/zoo/manifest.jsonl); log "zoo: $n adapters"
python3 -m lolscan zoo summary $P/zoo --json > $L/summary.json
cp $P/zoo/manifest.jsonl $L/zoo_manifest.jsonl; cp $P/zoo/zoo.json $L/zoo_zoo.json
M=$P/zoo/manifest.jsonl
mkdir -p $P/ck
tr() { local name=$1; shift
  python3 -m lolscan train $M "$@" --device cuda --out $P/ck/$name 2>&1 | grep -v "it/s" >> $L/train.log
  [ -d $P/ck/$name ] && tar -cf $O/$name.tar -C $P/ck $name && log "checkpoint $name"; }
# MLP+SVD (the best architecture on the third lease's zoo; GL-net d=16 checkpoints of that zoo are kept
# off the device) with k = 4 singular values per module, the training rank: a LoRA of higher rank is read by
# its top 4, never by features that were always zero in training. Then the shipped checkpoints on this zoo's
# test split, so the choice of what to ship is made on the same adapters.
tr qwen2.5-coder-1.5b-arc-c-accuracy-mlp-svd --target arc_c_acc --arch mlp-svd --hparam k=4
tr qwen2.5-coder-1.5b-val-loss-mlp-svd --target val_loss --arch mlp-svd --hparam k=4
tr qwen2.5-coder-1.5b-data-sources-mlp-svd --target sources --arch mlp-svd --hparam k=4
for c in models/qwen2.5-coder-1.5b-*/; do
  python3 -m lolscan eval $M --model $c --split test --device cuda --format json > $L/eval_shipped_$(basename $c).json 2>>$L/eval.log
done
log "shipped checkpoints evaluated on the test split"
python3 scripts/device/pick_examples.py $P/zoo $P/examples 4 arc_c_acc >> $L/train.log 2>&1 && tar -cf $O/examples.tar -C $P examples && log "examples"
A="bench/architectures.py $M -t arc_c_acc -t val_loss --seeds 5 --hparam glnet:d=16"
for at in glnet:4 mlp-svd:3 mlp-dense:1; do a=${at%:*} t=${at#*:}
  OMP_NUM_THREADS=$t nohup python3 $A --arch $a --device cpu --threads $t --json $L/arch_$a.json > $L/arch_$a.log 2>&1 &
done
# GL-net variants for the broken-adapter tail (bench/RESULTS.md, "GL-net on heavy-tailed zoos"): squashed
# invariants, and a narrower d with the robust scale and squash.
OMP_NUM_THREADS=4 nohup python3 $A --arch glnet --name glnet-asinh --hparam glnet:squash=asinh --device cpu --threads 4 \
  --json $L/arch_glnet-asinh.json > $L/arch_glnet-asinh.log 2>&1 &
OMP_NUM_THREADS=3 nohup python3 $A --arch glnet --name glnet-d4-median-asinh --hparam glnet:d=4 --hparam glnet:scale=median \
  --hparam glnet:squash=asinh --device cpu --threads 3 --json $L/arch_glnet-d4.json > $L/arch_glnet-d4.log 2>&1 &
log "architecture table: glnet (3 variants), mlp-svd, mlp-dense on the CPU cores (background)"
build recipes/qwen2.5-coder-1.5b-kv-ranks.toml $P/ranks 100
build recipes/qwen2.5-coder-1.5b-kv-mixed.toml $P/mixed 50
for z in ranks mixed; do cp $P/$z/manifest.jsonl $L/${z}_manifest.jsonl; cp $P/$z/zoo.json $L/${z}_zoo.json; done
log "rank sets: $(wc -l < $P/ranks/manifest.jsonl) ranks, $(wc -l < $P/mixed/manifest.jsonl) mixed"
for z in ranks mixed; do for c in $P/ck/*-mlp-svd models/qwen2.5-coder-1.5b-arc-c-accuracy models/qwen2.5-coder-1.5b-val-loss; do
  [ -d $c ] && timeout 60 python3 -m lolscan predict $P/$z/adapters --model $c \
    --device cuda --format jsonl > $L/pred_${z}_$(basename $c).jsonl 2>>$L/pred.log
done; done
log "rank sets scored"
# The raw-factor MLPs (25.7 M parameters on Qwen) take 2-3 minutes a run on CPU threads; the GPU is free now.
for a in mlp mlp-oalign; do
  python3 $A --arch $a --device cuda --json $L/arch_$a.json > $L/arch_$a.log 2>&1; log "architecture $a (GPU) done"
done
wait
python3 bench/architectures.py --from-json $L/arch_*.json --markdown > $L/architectures.md 2>&1
log "DONE"
touch $O/DONE
