#!/usr/bin/env bash
# The diffusion mix's leases rehearsed end to end on the dev CPU (README.md here, "Mix base"): the MiniLM and data
# chunks (CHUNKS, /work/main/.chunks by default; copied, never changed) in a stand-in repository, two "leases" on
# fresh folders, each parking the chunks one call at a time (qwen_park.sh), diff_start.sh with SMALL=1 DEV=cpu
# ZOO=mix (SMALL_N, 8: 4 groups of 2 a zoo; BASE_DTYPE float16 as on the GPU), qwen_poll_until.sh and smol_fetch.sh
# into one folder per call as the device tool returns them, pieces of PIECE (200 kB) bytes. The first lease stops
# the zoos after DIFF_GROUPS1 ("4 2": the fashion zoo complete, half the fonts zoo) groups; its pack is checked
# against the whole-folder tar the pipeline packed before (the same files, plus pack.json), merged at home
# (qwen_v3_home.py merge --mix), and its resume folder (base and scorer tars as a poll brought them, each zoo's
# manifest and zoo.json) goes into the last chunk. The second lease starts from it alone (the fashion zoo
# complete: the fonts zoo gets the time), builds the groups left, packs only its own adapters. After its merge
# each home zoo is compared with one uninterrupted build of the same recipe on the same base and scorer: manifest
# and zoo.json byte for byte, adapters by header and tensors (diffusers writes the header's metadata in hash
# order, so an adapter's bytes differ from process to process). Everything lives under $1 (/tmp/diffrh by
# default; removed first).
#   bash scripts/device/diff_rehearse.sh [DIR]     (≈ 5 minutes on 2 cores)
set -u
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD; R=${1:-/tmp/diffrh}; H=$R/home; C=$R/chunkrepo/.chunks; CHUNKS=${CHUNKS:-/work/main/.chunks}; N=${SMALL_N:-8}
HOME_PY="python3 $ROOT/scripts/device/qwen_v3_home.py"; ZOOS=(--mix --zoo zoo=$H/zoo --zoo zoo_fonts=$H/zoo_fonts)
[ -e $CHUNKS/g00 ] || { echo "no MiniLM chunks in $CHUNKS"; exit 2; }
rm -rf $R && mkdir -p $R/chunkrepo && cp -r $CHUNKS $C || exit 1
CAP=$(( $(du -sb $C/g00 | cut -f1) + 1000 ))  # the chunks' own cap (g00 is full)
source scripts/device/rehearse_calls.sh
lease() {  # lease P [env...]: what one lease's calls do, on a fresh P
  local P=$1; shift
  park_calls $P $C
  env "$@" SMALL=1 SMALL_N=$N DEV=cpu ZOO=mix BASE_DTYPE=float16 PIECE=${PIECE:-200000} P=$P OMP_NUM_THREADS=1 \
    nice -n 10 bash scripts/device/diff_start.sh 2000 300 0 > $P.start.log 2>&1
  fetch_calls $P "zoo packed"
  grep -E "carried|zoo \(|packed|DONE|FAILED" $P/out/progress
}
rows() { grep -c . $H/$1/manifest.jsonl; }
pieces() { find $1 -name "part.*" -printf "%f %p\n" | sort | cut -d" " -f2; }  # part.NN of all calls, in order
ok=1
$HOME_PY resume "${ZOOS[@]}" --chunks $C --cap $CAP --tars $R/none
lease $R/L1 DIFF_ROWS="0 0" DIFF_MAX_GROUPS="${DIFF_GROUPS1:-4 2}"
# the first lease packs what it packed before (a tar of zoo/ and zoo_fonts/), and pack.json
mkdir -p $R/pack1 $R/whole1 && cat $(pieces $R/L1.fetch) | tar -x -C $R/pack1 \
  && tar -cf - -C $R/L1 zoo zoo_fonts | tar -x -C $R/whole1 || ok=0
diff -r -x pack.json $R/whole1 $R/pack1 && [ -s $R/pack1/zoo/pack.json ] && [ -s $R/pack1/zoo_fonts/pack.json ] \
  && echo "first lease: the same files as a tar of zoo/ and zoo_fonts/ ($(find $R/pack1 -type f | wc -l) with pack.json)" || ok=0
$HOME_PY merge $R/L1.fetch/c* "${ZOOS[@]}" --chunks $C --manifest zoo=$R/L1.poll2/zoo_manifest.jsonl.gz \
  --manifest zoo_fonts=$R/L1.poll2/zoo_fonts_manifest.jsonl.gz || exit 1
$HOME_PY resume "${ZOOS[@]}" --chunks $C --cap $CAP --tars $R/L1.poll2 || exit 1
lease $R/L2 DIFF_ROWS="$(rows zoo) $(rows zoo_fonts)"
grep -q "zoo (fashion) complete" $R/L2/out/progress || { [ "$(rows zoo)" != $N ] || ok=0; }
[ -e $R/L2/inhouse-base-mix/base.json ] && ! grep -q "base rc" $R/L2/out/progress && echo "second lease: base and scorer from the resume folder" || ok=0
$HOME_PY merge $R/L2.fetch/c* "${ZOOS[@]}" --chunks $C || exit 1
$HOME_PY status "${ZOOS[@]}" | grep -E '"(zoo|rows|rows_without_adapter|adapters_without_row)"' | tr -d '\n'; echo
# what the second lease packed: its own adapters only
cat $(pieces $R/L2.fetch) | tar -t | grep -o '^[a-z_]*/adapters/lora-[0-9]*' | sort -u > $R/pack2.txt
python3 - $R/L2 $R/pack2.txt <<'PY' || ok=0
import json, pathlib, sys
p, listed = pathlib.Path(sys.argv[1]), set(open(sys.argv[2]).read().split())
for z in ("zoo", "zoo_fonts"):
    pack = json.loads((p / z / "pack.json").read_text())
    carried = {json.loads(x)["id"] for x in open(p / f"{z}.carried.jsonl") if x.strip()}
    assert pack["carried"] == len(carried) and not carried & set(pack["new"]), z
    assert {x for x in listed if x.startswith(z + "/")} == {f"{z}/adapters/{i}" for i in pack["new"]}, z
    print(f"second lease, {z}: {len(carried)} rows carried, {len(pack['new'])} adapters packed, all new")
PY
# one uninterrupted build of each zoo on the first lease's base and scorer
for z in zoo zoo_fonts; do
  t=$( [ $z = zoo ] && echo small.toml || echo small2.toml )
  (cd $R/L1 && PYTHONPATH=$R/L1/site:$ROOT OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 LOLSCAN_FASHION_MNIST=$R/L1/fm/usr/share/datasets/fashion-mnist \
    LOLSCAN_FONTS=$R/L1/fonts/usr/share/fonts/opentype/urw-base35 nice -n 10 python3 -m lolscan zoo build $t $R/ref/$z \
    --base-path inhouse-base-mix --device cpu --n-loras $N --group-size 2 --save-dtype float16 2>&1 | tail -1)
  cmp -s $H/$z/manifest.jsonl $R/ref/$z/manifest.jsonl && echo "$z: manifest identical to one uninterrupted build's" || ok=0
  cmp -s $H/$z/zoo.json $R/ref/$z/zoo.json && echo "$z: zoo.json identical" || ok=0
done
python3 - $H $R/ref <<'PY' || ok=0
import json, pathlib, sys
home, ref = map(pathlib.Path, sys.argv[1:])
def parts(f):  # a safetensors file as (header with its metadata as a dict, tensor bytes)
    b = f.read_bytes(); n = int.from_bytes(b[:8], "little")
    return json.loads(b[8:8 + n]), b[8 + n:]
for z in ("zoo", "zoo_fonts"):
    rows = [json.loads(x) for x in open(ref / z / "manifest.jsonl") if x.strip()]
    same = sum(parts(home / z / r["path"]) == parts(ref / z / r["path"]) for r in rows)
    print(f"{z}: {same} of {len(rows)} adapters identical in header and tensors")
    assert same == len(rows) == len(list((home / z / "adapters").iterdir()))
PY
[ $ok = 1 ] && echo "REHEARSAL OK" || { echo "REHEARSAL FAILED"; exit 1; }
