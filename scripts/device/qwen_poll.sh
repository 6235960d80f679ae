#!/usr/bin/env bash
# Device, the calls after qwen_start.sh: wait up to $1 seconds (or until the pipeline is DONE, or until
# $P/out/progress holds the text $3), show how far it got; with $2 = fetch, copy what is ready to $OUT
# (checkpoint and example tars, and logs.tar with every log and JSON).
P=${P:-/root/q}; O=$P/out
end=$(( $(date +%s) + ${1:-0} ))
while [ $(date +%s) -lt $end ] && [ ! -e $O/DONE ]; do
  [ -n "$3" ] && grep -q "$3" $O/progress 2>/dev/null && break
  sleep 3
done
cat $O/progress 2>/dev/null; echo "--"; tail -4 $O/logs/bench.log; echo "--"
for f in $O/logs/build_*.log $O/logs/cur.log; do [ -e $f ] && tail -2 $f; done
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader; df -h /root | tail -1
if [ "$2" = fetch ]; then
  cp $O/*.tar $O/*.gz $OUT/ 2>/dev/null; cp $O/progress $O/logs/ 2>/dev/null
  tar -cf $OUT/logs.tar -C $O logs; ls -la $OUT
fi
