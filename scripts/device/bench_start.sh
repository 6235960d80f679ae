#!/usr/bin/env bash
# Device, first call of a Qwen lease. (1) The sequential peft baseline of issue 5's multi-LoRA goal, run here,
# in the call, while the machine is otherwise idle: it is host-bound (a 135M model), so it must not share the
# host with the transfer calls that follow. (2) Start the multi-LoRA timings detached (setsid; GPU-bound, so
# the transfers do not move them), to run while the next calls carry the model in. Both use SmolLM2's shapes
# with random weights (bench/zoo_throughput.py --random-init). Needs .benchkit carried (wheels,
# zoodata.tgz, smollm2/ config + tokenizer). Results go to $P/out/logs; qwen_pipeline.sh waits for
# $P/out/bench.done before the zoo build touches the GPU.
P=${P:-/root/q}
K=$PWD/.benchkit
mkdir -p $P/out/logs && rm -rf $P/benchrepo && mkdir -p $P/benchrepo
tar -c --exclude=./.chunks --exclude=./.benchkit . | tar -x -C $P/benchrepo
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $P/site $K/*.whl || exit 5
tar -xzf $K/zoodata.tgz -C $P && rm -rf $P/smollm2 && cp -r $K/smollm2 $P/ || exit 5
cd $P/benchrepo && source scripts/device/qwen_env.sh
timeout 150 python3 bench/zoo_throughput.py recipes/smollm2-135m-kv-r4.toml --device cuda --random-init $P/smollm2 \
  --steps 40 --batch 8 --k --sequential 6 --json $P/out/logs/zoo_throughput_seq_idle.json 2>&1 | grep -v "it/s" | tail -4
setsid nohup bash scripts/device/bench_run.sh > $P/out/logs/bench.log 2>&1 < /dev/null &
echo "benchmarks started (pid $!)"
