#!/usr/bin/env bash
# Run by bench_start.sh in a copy of the repo, detached; see there.
P=${P:-/root/q}
source scripts/device/qwen_env.sh
L=$P/out/logs
T0=$(date +%s)
echo "== multi-LoRA, SmolLM2 shapes ($(date -u +%T))"
B="--baseline-json $L/zoo_throughput_seq_idle.json"; [ -e $L/zoo_throughput_seq_idle.json ] || B="--sequential 3"
timeout 330 python3 bench/zoo_throughput.py recipes/smollm2-135m-kv-r4.toml --device cuda --random-init $P/smollm2 \
  --steps 40 --batch 8 --k 128 --compile $B \
  --json $L/zoo_throughput_smollm2_h200_compile.json 2>&1 | grep -v "it/s"
echo "== done at $(( $(date +%s) - T0 )) s"
touch $P/out/bench.done
