#!/usr/bin/env bash
# Device, eleventh lease: after the last carried piece is parked (qwen_park.sh with P=/root/d), copy the repo
# to $P/repo and start diff_pipeline.sh detached (setsid), so it runs on between calls; later calls wait and
# fetch (P=/root/d qwen_poll_until.sh D; P=/root/d smol_fetch.sh). $1: the seconds after the start by which
# the zoo build stops (ZOO_END); $2: the base's training seconds (BASE_S); $3: retest groups (0: none). A
# resumed lease parks resume.tar (inhouse-base/, inhouse-clip/, zoo/ of the lease before) and skips the base;
# a resumed ZOO=mix lease parks diff_resume/ instead (base, scorer, the zoos' manifests: README.md, "Mix base").
# Other settings pass through the environment: ZOO=glyphs, DORA_MIN, BENCH_S, BENCH_ARGS, BASE_DTYPE (see
# diff_pipeline.sh), e.g. `ZOO=glyphs DORA_MIN=6 BENCH_S=90 BASE_DTYPE=float16 P=/root/d bash diff_start.sh 1300 300 0`.
P=${P:-/root/d}
# MiniLM's pieces, unless diff_setup.sh installed them already on this machine (an earlier diff_bench.sh call does,
# and removes the pieces: eighteenth session)
n=$(ls $P/mpart?? 2>/dev/null | wc -l); want=$(cat $P/nparts 2>/dev/null)
[ -e $P/ready ] || [ "$n" = "$want" ] || { echo "PERSISTENCE: $n of ${want:-?} MiniLM parts in $P"; ls -la $P; exit 3; }
rm -rf $P/repo && mkdir -p $P/repo $P/out/logs && date +%s > $P/out/t0
tar -c --exclude=./.chunks . | tar -x -C $P/repo
cd $P/repo && P=$P ZOO_END=${1:-900} BASE_S=${2:-300} RETEST_GROUPS=${3:-4} setsid nohup bash scripts/device/diff_pipeline.sh > $P/out/logs/pipeline.log 2>&1 < /dev/null &
echo "pipeline started (pid $!)"
sleep 45; cat $P/out/progress 2>/dev/null; tail -3 $P/out/logs/base.log $P/out/logs/clip.log 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
