#!/usr/bin/env bash
# Device: bench/diffusion_zoo_throughput.py on a machine where qwen_park.sh (P=/root/d) parked MiniLM's
# pieces and the wheels (and fonts-urw-base35 for the glyph recipe): diff_setup.sh installs them, then the
# bench runs with the arguments given, its JSON and log coming back in $OUT. Twelfth lease, e.g.
#   P=/root/d bash scripts/device/diff_bench.sh recipes/inhouse-fonts-identity.toml --base-path models/inhouse/pixel-32-glyphs \
#       --clip-model models/inhouse/clip-glyphs --label --k 64 128 --sequential 3 --steps 150 --batch 8 --max-seconds 170
P=${P:-/root/d}; O=$P/out; L=$O/logs; mkdir -p $L; T0=$(date +%s); W=$PWD
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $O/progress; }
source scripts/device/diff_setup.sh || exit $?
python3 bench/diffusion_zoo_throughput.py --device ${DEV:-cuda} "$@" --json $OUT/diffusion_zoo_throughput.json 2>&1 | tee $OUT/bench_zoo.log | tail -5
