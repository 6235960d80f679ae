#!/usr/bin/env bash
# Qwen2.5-Coder-1.5B zoo, device calls 1-16: park the carried chunk of the gzipped GGUF (call 1 also
# brings the data and wheels) in /root/q, which survives between calls while the machine stays held.
# A call carries at most 64 MiB, so the 1.09 GB model travels in 17 pieces (.chunks/gNN, made by
# scripts/device/make_chunks.py); then `qwen_start.sh` starts the build (see README.md here).
P=${P:-/root/q}
mkdir -p $P && for d in .chunks/g*; do  # a chunk parked by an earlier call of the lease stays as an empty folder
  if [ -n "$(ls -A $d 2>/dev/null)" ]; then mv $d/* $P/; fi; done
echo "parked: $(ls $P | wc -l) files, $(du -sb $P | cut -f1) bytes"
if [ "${1:-}" = env ]; then
  [ -e $P/t_call1 ] || date +%s > $P/t_call1  # the lease's first call (qwen_v3.sh's V3_END counts from it)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch, transformers, peft; print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__)"
  nproc; df -h /root | tail -1
fi
