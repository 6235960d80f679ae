#!/usr/bin/env bash
# Device: qwen_poll.sh with an absolute deadline, D seconds after qwen_start.sh started the pipeline
# ($P/out/t0), each call waiting at most 585 s. Lets a whole lease go out as one batch of calls with no gap
# between them (a gap over 30 s gives the machine back): polls after the deadline return at once. Without a
# started pipeline it returns at once, so a batch that lost its machine holds no fresh one idle.
P=${P:-/root/q}
[ -e $P/out/t0 ] || { echo "no pipeline started on this machine"; exit 0; }
w=$(( $(cat $P/out/t0) + ${1:?deadline in seconds after the start} - $(date +%s) ))
[ $w -gt 585 ] && w=585; [ $w -lt 0 ] && w=0
echo "waiting $w s (deadline $1 s after the start)"
bash scripts/device/qwen_poll.sh $w "${2:-}" "${3:-}"
