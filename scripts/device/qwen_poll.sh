#!/usr/bin/env bash
# Device, the calls after qwen_start.sh: wait up to $1 seconds (or until the pipeline is DONE, or until
# $P/out/progress holds the text $3), show how far it got, and bring back what is ready every time: the
# gzipped zoo manifest (the labels, about 500 GPU-seconds of work) as soon as it exists, and logs.tar with
# every log and JSON. A machine left idle for 30 s goes back with all of $P (the sixth lease lost a finished
# zoo that way), so nothing waits for a last call. With $2 = fetch, the checkpoint and example tars come too.
P=${P:-/root/q}; O=$P/out
end=$(( $(date +%s) + ${1:-0} ))
while [ $(date +%s) -lt $end ] && [ ! -e $O/DONE ]; do
  [ -n "$3" ] && grep -q "$3" $O/progress 2>/dev/null && break
  sleep 3
done
cat $O/progress 2>/dev/null; echo "--"; tail -4 $O/logs/bench.log 2>/dev/null; echo "--"
for f in $O/logs/build_*.log $O/logs/cur.log; do [ -e $f ] && tail -2 $f; done
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader; df -h /root | tail -1
cp $O/*.gz $OUT/ 2>/dev/null; cp $O/progress $O/logs/ 2>/dev/null
[ "$2" = fetch ] && cp $O/*.tar $OUT/ 2>/dev/null
[ -d $O/logs ] && tar -cf $OUT/logs.tar -C $O logs; ls -la $OUT
