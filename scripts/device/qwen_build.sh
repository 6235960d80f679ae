#!/usr/bin/env bash
# Qwen zoo, device call 17: the last chunk; rebuild and check the GGUF, convert it once to safetensors,
# then build the zoo until the call's time is nearly up (resumable: qwen_train.sh continues it).
# GROUP (default 48) adapters train at once; on "out of memory" the build restarts at half that.
set -o pipefail
T0=$(date +%s)
source scripts/device/qwen_env.sh
for d in .chunks/g*; do mv $d/* $P/ 2>/dev/null; done
n=$(ls $P/part?? 2>/dev/null | wc -l)
[ "$n" = 17 ] || { echo "PERSISTENCE: $n of 17 parts in $P"; ls -la $P; exit 3; }
G=$P/gguf/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
mkdir -p $P/gguf && cat $P/part?? | gunzip > $G || exit 4
echo "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046  $G" | sha256sum -c || exit 4
rm -f $P/part??
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $P/site $P/*.whl || exit 5
tar -xzf $P/zoodata.tgz -C $P || exit 5
echo "model ready at $(( $(date +%s) - T0 )) s"
python3 -m lolscan zoo convert-base $R $P/st --base-path $P/gguf 2>&1 | grep -v "it/s" | tail -3
echo "converted at $(( $(date +%s) - T0 )) s"
build() {  # build for what is left of the call, with group size $1
  local left=$(( ${BUDGET:-585} - ($(date +%s) - T0) ))
  timeout $left python3 -m lolscan zoo build $R $P/zoo --device ${DEV:-cuda} --base-path $P/st --group-size $1 \
    --max-minutes $(python3 -c "print(($left - 25) / 60)") 2>&1 | grep -v "it/s" | tee -a $OUT/build1.log
}
G1=${GROUP:-48}
build $G1
if grep -q "out of memory" $OUT/build1.log && [ ! -s $P/zoo/manifest.jsonl ]; then
  G1=$(( G1 / 2 )); echo "== OOM: again at group size $G1"; rm -rf $P/zoo; build $G1
fi
echo $G1 > $P/group_size
python3 -m lolscan zoo summary $P/zoo --json > $OUT/summary1.json; head -c 300 $OUT/summary1.json
nvidia-smi --query-gpu=memory.used --format=csv,noheader
