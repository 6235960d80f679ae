# Sourced by the CPU rehearsals (diff_rehearse.sh, qwen_v3_rehearse.sh; ROOT: the repository): one lease's device
# calls made here, each call's files into a folder of its own, as the device tool returns them.
park_calls() {  # park_calls P CHUNKS: one call per chunk, carrying that chunk alone (hard links: chunks stay put)
  local P=$1 C=$2 first=env g D
  mkdir -p $P
  for g in $C/g*; do
    D=$P.call_$(basename $g); mkdir -p $D/.chunks && cp -al $g $D/.chunks/
    (cd $D && P=$P bash $ROOT/scripts/device/qwen_park.sh $first >> $P.park.log 2>&1); first=
  done
}
fetch_calls() {  # fetch_calls P TEXT: a poll until TEXT is in the progress log, smol_fetch.sh until every piece
  local P=$1 k=0 out  # came (at most 20 calls), then a last poll (the cumulative manifests, the logs)
  mkdir -p $P.poll1 && OUT=$P.poll1 P=$P bash $ROOT/scripts/device/qwen_poll_until.sh 1000 "" "$2" > $P.poll1.log 2>&1
  while [ $k -lt 20 ]; do
    mkdir -p $P.fetch/c$k; out=$(OUT=$P.fetch/c$k P=$P bash $ROOT/scripts/device/smol_fetch.sh); echo "$out" > $P.fetch/c$k.log
    echo "$out" | grep -q "sent \([0-9]*\) of \1 " && break; k=$(( k + 1 ))
  done
  mkdir -p $P.poll2 && OUT=$P.poll2 P=$P bash $ROOT/scripts/device/qwen_poll_until.sh 1000 > $P.poll2.log 2>&1
}
