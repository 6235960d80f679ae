#!/usr/bin/env bash
# Device: pack files for the trip home. `pack.sh DIR TAR-ARGS...` tars TAR-ARGS (names relative to DIR, or
# `-T LIST`, a file of names) into pieces of PIECE bytes (16,700,000: under the 16 MiB a file may be, and four
# of them, 66.8 MB, under the 64 MiB one call brings back) as $Q/part.NN (Q: $P/out/zoo by default), then
# SHA256SUMS, and last PACKED (the piece count), which smol_fetch.sh waits for. Here: `sha256sum -c
# SHA256SUMS`, then `cat part.* | tar -x` (or scripts/device/qwen_v3_home.py merge for the Qwen v3 zoo).
Q=${Q:-$P/out/zoo}; d=$1; shift
mkdir -p $Q && tar -cf - -C $d "$@" | split -b ${PIECE:-16700000} -d -a 2 - $Q/part. \
  && (cd $Q && sha256sum part.* > SHA256SUMS) && ls $Q/part.* | wc -l > $Q/PACKED
