#!/usr/bin/env bash
# Issue 17's Qwen2.5-Coder-1.5B v2 pilot (recipes/qwen2.5-coder-1.5b-kv-r4-v2-pilot.toml: 100 LoRAs, measured
# labels), run by qwen_pipeline.sh in place of the 2,000-LoRA zoo once the GGUF is converted ($P/st):
# `PILOT=1 bash scripts/device/qwen_start.sh BUILD_S 0` (README.md here, "Qwen v2 pilot").
#   1. the pilot zoo: ARC-C on the full 1,172-question test, 5-shot, per-question correctness stored; validation
#      loss per source and val_loss_own. Groups of GROUP (12: fits an H100, and at 100 LoRAs pads less than 24:
#      121,504 padded rows against 160,672). It stops between groups BUILD_S seconds after it starts (hard
#      kill 90 s later); the manifest so far is gzipped into $O every 20 s, so every poll brings back the
#      groups done even if the lease ends first. PILOT_N: fewer LoRAs (the first N of the recipe).
#   2. on the manifest: bench/label_noise.py (binomial and bootstrap R² ceilings of arc_c_acc, every LoRA and
#      the healthy ones, lr ≤ 1e-3), bench/hp_baseline.py (recipe-only R² of arc_c_acc, val_loss,
#      val_loss_own; ridge alone where scikit-learn is missing), `lolscan zoo summary`, all into $O/logs.
# SMALL=1 DEV=cpu: the CPU rehearsal (qwen_pipeline.sh comes here before the GGUF steps): a tiny random Llama
# (tests/zoo_toy.py) for the converted model, SMALL_N LoRAs of a few steps, ARC-C on its first 8 questions.
set -o pipefail
T0=${T0:-$(date +%s)}
source scripts/device/qwen_env.sh
source scripts/device/qwen_analyses.sh
O=$P/out; L=$O/logs; mkdir -p $L
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $O/progress; }
DEV=${DEV:-cuda}; PR=recipes/qwen2.5-coder-1.5b-kv-r4-v2-pilot.toml; Q=1172; Z=$P/pilot; S=${BUILD_S:-900}
NP=(--group-size ${GROUP:-12}); [ -n "${PILOT_N:-}" ] && NP+=(--n-loras $PILOT_N)
if [ "${SMALL:-0}" = 1 ]; then
  tar -xzf $P/zoodata.tgz -C $P || { log "FAILED: data"; exit 5; }
  python3 -c "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; from zoo_toy import save_tiny_hf_base
save_tiny_hf_base(Path('$P/st'))" || { log "FAILED: tiny model"; exit 5; }
  printf 'extends = "%s"\n[hparams]\nsteps = { epochs = [0.1, 0.3] }\nlr = { loguniform = [1e-4, 1e-1] }\n[[eval]]\nname = "arc_c"\nrequests = "%s"\nmax_docs = 8\n' \
    $PWD/$PR oe_eval_tasks/arc_challenge/test_mc_5shot/requests.jsonl.gz > $P/pilot_small.toml  # high lr: labels that vary
  PR=$P/pilot_small.toml; Q=8; NP=(--group-size 4 --n-loras ${SMALL_N:-24})
  log "small: tiny model, $PR"
fi
snap() { [ -s $Z/manifest.jsonl ] && gzip -c $Z/manifest.jsonl > $O/.p.gz && mv $O/.p.gz $O/qwen_v2pilot_manifest.jsonl.gz; }
log "pilot: building (${NP[*]}, at most $S s)"
timeout $(( S + 90 )) python3 -m lolscan zoo build $PR $Z --device $DEV --base-path $P/st "${NP[@]}" --save-dtype float16 \
  --max-minutes $(python3 -c "print(($S - 15) / 60)") > $L/build_pilot.log 2>&1 & B=$!
while kill -0 $B 2>/dev/null; do sleep ${SNAP_S:-20}; snap; done
wait $B; rc=$?; snap
M=$Z/manifest.jsonl
[ -s $M ] || { log "FAILED: no pilot manifest (rc $rc): $(tail -1 $L/build_pilot.log)"; touch $O/DONE; exit 6; }
log "pilot: $(wc -l < $M) adapters (rc $rc): $(grep -E "adapters, (complete|stopped)" -A1 $L/build_pilot.log | tr '\n' ' ')"
sha256sum $M | tee -a $O/progress
cp $Z/zoo.json $L/pilot_zoo.json; python3 -m lolscan zoo summary $Z --json > $L/pilot_summary.json 2>&1
qwen_analyses $M $Q
log "DONE"
touch $O/DONE
