#!/usr/bin/env bash
# Issue 17's Qwen2.5-Coder-1.5B v3 zoo (recipes/qwen2.5-coder-1.5b-kv-r4-v3.toml: 2,000 LoRAs, measured labels,
# ≈ 3.4 GPU-s a LoRA), built over about six leases, each on a fresh machine, each resuming the zoo where the
# last stopped and bringing its own adapters home. Run by qwen_pipeline.sh in place of the 2,000-LoRA v1 zoo
# once the GGUF is converted ($P/st): `V3=1 bash scripts/device/qwen_start.sh BUILD_S 0` (README.md here,
# "Qwen v3").
#   0. the resume pair: `scripts/device/qwen_v3_home.py resume` put the home zoo's manifest.jsonl.gz, zoo.json
#      and SHA256SUMS in the last chunk (.chunks/gNN/v3_resume/), which qwen_park.sh parked as $P/v3_resume;
#      they seed $P/v3, so the build goes on with the same zoo (same recipe and pool digests, same base labels)
#      and builds only the groups whose rows are not in it (their adapters stay at home). V3_ROWS: the rows
#      the pair must hold (0: none carried, the first lease); another count stops the lease before building.
#      With known.jsonl.gz there too (`resume --known`: a kept manifest whose adapters were lost) the build runs
#      with --labels-from it: its groups at training cost, the others measured (V3_CHECK_EVERY: 8). It reproduces
#      only on the GPU model that built it: on another, V3_KNOWN=carry carries its rows instead (V3_ROWS counts
#      them), and only later groups are built. Either way the build writes its own zoo.json (home keeps the first).
#   1. the build (never --group-size: it is in the recipe's digest), stopped between groups BUILD_S seconds
#      after it starts, and earlier if V3_END is set: V3_END seconds after the lease's first call
#      (qwen_park.sh env, $P/t_call1); hard kill 90 s later. Every SNAP_S (20) seconds the manifest is
#      gzipped into $O/qwen_v3_manifest.jsonl.gz and zoo.json copied into $O/logs, so every poll brings them.
#   2. pack (pack_list.py, pack.sh): a tar of v3/manifest.jsonl (all rows, carried and new), v3/zoo.json,
#      v3/pack.json (the new ids, the rows carried, the device) and the adapters of the rows that were not
#      carried, in pieces of 16.7 MB ($O/zoo/part.NN, SHA256SUMS, PACKED) that `P=/root/q smol_fetch.sh` brings back four per call.
#   3. on the cumulative manifest: `lolscan zoo summary`, bench/label_noise.py (arc_c_acc, binomial and
#      bootstrap, every LoRA and lr ≤ 1e-3) and bench/hp_baseline.py (arc_c_acc, val_loss, val_loss_own) into
#      $O/logs; then DONE.
# SMALL=1 DEV=cpu: the CPU rehearsal (qwen_pipeline.sh comes here before the GGUF steps): a tiny random Llama
# (tests/zoo_toy.py), a derived recipe that keeps v3's sources, caps, measured labels and lr mixture (60 % in
# v3's healthy range; the 40 % at 1e-2 to 1e-1, which damages a tiny model in a few steps) with SMALL_N (24)
# LoRAs in groups of 4, a few steps each, ARC-C on its first 8 questions; V3_RECIPE (and
# V3_QUESTIONS) replace it (tests/test_qwen_v3_lease.py: a toy recipe on toy data), V3_MAX_GROUPS stops the
# build after that many groups, V3_ANALYSES=0 skips step 3 but the summary, PIECE sets the piece size.
set -o pipefail
T0=${T0:-$(date +%s)}
source scripts/device/qwen_env.sh
source scripts/device/qwen_analyses.sh
O=$P/out; L=$O/logs; mkdir -p $L
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $O/progress; }
fail() { log "FAILED: $*"; touch $O/DONE; exit 6; }
DEV=${DEV:-cuda}; VR=${V3_RECIPE:-recipes/qwen2.5-coder-1.5b-kv-r4-v3.toml}; Q=${V3_QUESTIONS:-1172}; Z=$P/v3
S=${BUILD_S:-900}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1); GPU=${GPU:-$DEV}
# 0. the resume pair
: > $P/v3.carried.jsonl
if [ -d $P/v3_resume ]; then
  (cd $P/v3_resume && sha256sum -c SHA256SUMS > /dev/null) || fail "the resume pair's sha256 ($P/v3_resume)"
  [ ! -e $Z/manifest.jsonl ] || fail "$Z already holds a manifest: a resume pair goes into a fresh machine"
  mkdir -p $Z
  if [ -e $P/v3_resume/manifest.jsonl.gz ]; then
    zcat $P/v3_resume/manifest.jsonl.gz > $P/v3.carried.jsonl && cp $P/v3_resume/zoo.json $Z/zoo.json || fail "resume pair"
  fi
fi
KN=()  # resume --known: a kept manifest whose adapters were lost
if [ -e $P/v3_resume/known.jsonl.gz ]; then
  zcat $P/v3_resume/known.jsonl.gz > $P/v3_known.jsonl || fail "known manifest"
  log "v3: a kept manifest, $(grep -c . $P/v3_known.jsonl) rows (sha256 $(sha256sum < $P/v3_known.jsonl | cut -c1-16)), ${V3_KNOWN:-rebuild}"
  rm -f $Z/zoo.json  # the build writes its own (base labels, label source): home's may record another label source
  if [ "${V3_KNOWN:-rebuild}" = carry ]; then  # another GPU than built it: its rows carried, so only groups after them are built
    python3 -c "import json, sys; c = [json.loads(x) for x in open(sys.argv[1]) if x.strip()]; have = {r['id'] for r in c}
sys.stdout.writelines(json.dumps(r) + '\n' for r in [*(json.loads(x) for x in open(sys.argv[2]) if x.strip())] if r['id'] not in have)" \
      $P/v3.carried.jsonl $P/v3_known.jsonl >> $P/v3.carried.jsonl || fail "known rows"
  else  # its groups at training cost, the rest measured
    KN=(--labels-from $P/v3_known.jsonl --check-every ${V3_CHECK_EVERY:-8})
  fi
fi
[ -s $P/v3.carried.jsonl ] && cp $P/v3.carried.jsonl $Z/manifest.jsonl
NC=$(grep -c . $P/v3.carried.jsonl)
log "v3: $NC rows carried$( [ $NC = 0 ] || echo " (manifest sha256 $(sha256sum < $P/v3.carried.jsonl | cut -c1-16))"), device $GPU"
[ -z "${V3_ROWS:-}" ] || [ "$V3_ROWS" = "$NC" ] || fail "V3_ROWS=$V3_ROWS but $NC rows carried: not building (a stale or missing resume pair)"
if [ "${SMALL:-0}" = 1 ]; then
  [ ! -e $P/zoodata.tgz ] || tar -xzf $P/zoodata.tgz -C $P || fail "data"
  python3 -c "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; from zoo_toy import save_tiny_hf_base
save_tiny_hf_base(Path('$P/st'))" || fail "tiny model"
  if [ -z "${V3_RECIPE:-}" ]; then  # v3 but for size, steps, questions and a damaging range that damages a tiny model
    printf 'extends = "%s"\nn_loras = %s\ngroup_size = 4\n[hparams]\nsteps = { epochs = [0.1, 0.3] }\nlr = %s\n[[eval]]\nname = "arc_c"\nrequests = "%s"\nmax_docs = 8\n' \
      $PWD/$VR ${SMALL_N:-24} "{ mixture = [[0.60, { loguniform = [2e-5, 5e-4] }], [0.40, { loguniform = [1e-2, 1e-1] }]] }" \
      oe_eval_tasks/arc_challenge/test_mc_5shot/requests.jsonl.gz > $P/v3_small.toml
    VR=$P/v3_small.toml; Q=8
  fi
  log "small: tiny model, $VR"
fi
# 1. the build
if [ -n "${V3_END:-}" ] && [ -e $P/t_call1 ]; then  # whatever the chunk calls took, stop in time for the fetch
  e=$(( $(cat $P/t_call1) + V3_END - $(date +%s) )); [ $e -lt $S ] && { S=$e; log "V3_END: the build gets $S s"; }
fi
[ $S -gt 60 ] || fail "no time left to build ($S s)"
NG=(); [ -n "${V3_MAX_GROUPS:-}" ] && NG=(--max-groups $V3_MAX_GROUPS)
snap() { [ -s $Z/manifest.jsonl ] && gzip -c $Z/manifest.jsonl > $O/.v.gz && mv $O/.v.gz $O/qwen_v3_manifest.jsonl.gz
         [ -e $Z/zoo.json ] && cp $Z/zoo.json $L/v3_zoo.json; }
log "v3: building (at most $S s${NG:+, ${NG[*]}})"
timeout $(( S + 90 )) python3 -m lolscan zoo build $VR $Z --device $DEV --base-path $P/st --save-dtype float16 "${NG[@]}" "${KN[@]}" \
  --max-minutes $(python3 -c "print(($S - 15) / 60)") > $L/build_v3.log 2>&1 & B=$!
i=0; while kill -0 $B 2>/dev/null; do sleep 1; i=$(( i + 1 )); [ $(( i % ${SNAP_S:-20} )) = 0 ] && snap; done
wait $B; rc=$?; snap
[ $rc = 0 ] || log "v3: build rc $rc: $(grep -v '^ *$' $L/build_v3.log | tail -2 | tr '\n' ' ' | cut -c1-400)"
M=$Z/manifest.jsonl
[ -s $M ] || fail "no v3 manifest (rc $rc): $(tail -1 $L/build_v3.log)"
log "v3: $(wc -l < $M) rows, $(( $(wc -l < $M) - NC )) new (rc $rc): $(grep -E "adapters, (complete|stopped)" -A1 $L/build_v3.log | tr '\n' ' ')"
sha256sum $M | tee -a $O/progress
# 2. pack the rows built here (manifest first: a partial fetch still brings it)
python3 scripts/device/pack_list.py $P "$GPU" v3 > $P/pack.list || fail "pack list"
Q=$O/zoo bash scripts/device/pack.sh $P -T $P/pack.list || fail "pack"
log "v3 packed: $(( $(wc -l < $P/pack.list) - 3 )) adapters, $(cat $O/zoo/PACKED) pieces, $(du -sb $O/zoo | cut -f1) bytes"
# 2b. V3_PVE=CHECKPOINT: issue 17 item 4 on this GPU while the pieces are fetched — one adapter of the build evaluated
# as a user would (peft merge, all ARC-C questions 5-shot) against `lolscan predict` of it and of a folder of up to 100
# of the build's adapters (bench/predict_vs_eval.py). An absolute path: the run works in a copy of the tree without
# .benchkit, so the start call copies a carried checkpoint to $P first (README.md here, "Seventh v3 lease").
if [ -n "${V3_PVE:-}" ] && [ "${SMALL:-0}" != 1 ]; then
  timeout ${V3_PVE_S:-300} python3 bench/predict_vs_eval.py --base-path $P/st --model $V3_PVE --device $DEV \
    --requests $LOLSCAN_ZOO_DATA/oe_eval_tasks/arc_challenge/test_mc_5shot/requests.jsonl.gz --folder $Z/adapters --n 100 \
    --json $L/predict_vs_eval.json > $L/predict_vs_eval.log 2>&1; log "predict_vs_eval rc $?"
fi
# 3. analyses of the cumulative manifest
python3 -m lolscan zoo summary $Z --json > $L/v3_summary.json 2>&1
[ "${V3_ANALYSES:-1}" = 0 ] && { log "DONE (no analyses: V3_ANALYSES=0)"; touch $O/DONE; exit 0; }
qwen_analyses $M $Q
log "DONE"
touch $O/DONE
