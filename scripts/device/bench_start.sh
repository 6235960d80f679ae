#!/usr/bin/env bash
# Device, first call of a Qwen lease: start the GPU benchmarks that need no Qwen weights, detached (setsid),
# so they run while the next calls carry the model in: the folder scan of issue 3 (bench/scan.py, 8,000
# SD1.5-shaped files) and SmolLM2-shaped multi-LoRA training of issue 5 (bench/zoo_throughput.py, random
# weights). Needs .benchkit carried (wheels, zoodata.tgz, smollm2/ config + tokenizer). Results go to
# $P/out/logs; qwen_pipeline.sh waits for $P/out/bench.done before it touches the GPU.
P=${P:-/root/q}
K=$PWD/.benchkit
mkdir -p $P/out/logs && rm -rf $P/benchrepo && mkdir -p $P/benchrepo
tar -c --exclude=./.chunks --exclude=./.benchkit . | tar -x -C $P/benchrepo
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $P/site $K/*.whl || exit 5
tar -xzf $K/zoodata.tgz -C $P && rm -rf $P/smollm2 && cp -r $K/smollm2 $P/ || exit 5
cd $P/benchrepo && setsid nohup bash scripts/device/bench_run.sh > $P/out/logs/bench.log 2>&1 < /dev/null &
echo "benchmarks started (pid $!)"
