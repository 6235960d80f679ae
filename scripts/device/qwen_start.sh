#!/usr/bin/env bash
# Device, the call after the last chunk is parked (with models/*.safetensors back in the tree, which chunk
# calls leave out to stay under 64 MiB): check that all parts are in $P (as many as make_chunks.py wrote to nparts), copy the repo there and start
# qwen_pipeline.sh detached (setsid), so the whole build runs on between calls; the next calls only wait and
# fetch (qwen_poll.sh). $1: the most seconds the main zoo may build (it stops after a whole group).
# PILOT=1 in the environment: issue 17's v2 pilot instead (qwen_pilot.sh; $1 is then the pilot's build seconds).
# V3=1: one lease of the v3 zoo instead (qwen_v3.sh; $1: its build seconds; V3_ROWS, V3_END pass through).
P=${P:-/root/q}
n=$(ls $P/part?? 2>/dev/null | wc -l); want=$(cat $P/nparts 2>/dev/null)
[ "$n" = "$want" ] || { echo "PERSISTENCE: $n of ${want:-?} parts in $P"; ls -la $P; exit 3; }
rm -rf $P/repo && mkdir -p $P/repo $P/out/logs && date +%s > $P/out/t0
tar -c --exclude=./.chunks --exclude=./.benchkit . | tar -x -C $P/repo
ls $P/repo/models/qwen2.5-coder-1.5b-*/model.safetensors >/dev/null || echo "WARNING: no shipped Qwen checkpoints in the tree: they will not be evaluated" 
cd $P/repo && BUILD_S=${1:-900} SUITE=${2:-1} setsid nohup bash scripts/device/qwen_pipeline.sh > $P/out/logs/pipeline.log 2>&1 < /dev/null &
echo "pipeline started (pid $!)"
sleep 3; tail -3 $P/out/logs/bench.log 2>/dev/null; cat $P/out/progress 2>/dev/null; true  # neither exists yet on the v3 path
