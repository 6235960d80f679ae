#!/usr/bin/env bash
# Device, after the SmolLM2 wheel's chunks are parked (qwen_park.sh with P=/root/s): check the parts, copy
# the repo to $P and start smol_pipeline.sh detached (setsid), so it runs on between calls; later calls
# only wait and fetch (P=/root/s qwen_poll_until.sh D). $1: the most seconds the zoo may build; $2: the
# seconds after the start by which every training run stops (the lease's last fetch).
P=${P:-/root/s}
n=$(ls $P/part?? 2>/dev/null | wc -l); want=$(cat $P/nparts 2>/dev/null)
[ "$n" = "$want" ] || { echo "PERSISTENCE: $n of ${want:-?} parts in $P"; ls -la $P; exit 3; }
rm -rf $P/repo && mkdir -p $P/repo $P/out/logs && date +%s > $P/out/t0
tar -c --exclude=./.chunks . | tar -x -C $P/repo
ls $P/repo/models/smollm2-*/model.safetensors >/dev/null || echo "WARNING: no shipped SmolLM2 checkpoints in the tree"
cd $P/repo && P=$P BUILD_S=${1:-700} DEADLINE_S=${2:-3600} WHEEL_SHA=$(cat $P/wheel_sha256) setsid nohup bash scripts/device/smol_pipeline.sh > $P/out/logs/pipeline.log 2>&1 < /dev/null &
echo "pipeline started (pid $!)"
sleep 5; cat $P/out/progress 2>/dev/null; nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
