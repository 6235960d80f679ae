#!/usr/bin/env bash
# Device (issue 21): the Ray scan's adapters/s on the GPU machine, which has no Ray. Calls 1-2 park pieces
# of a tar of wheels (ray 2.60 for cp312, pyarrow, pandas, fsspec, msgpack, pyyaml, jsonschema and its
# dependencies, click, protobuf: .chunks/gNN/rpartNN, nparts), call 3 (`ray_gpu.sh run`) joins them,
# installs them into $P/site and runs `bench/ray_scan.py --device cuda` (local path and Ray, same folder).
P=${P:-/root/r}
mkdir -p $P && for d in .chunks/g*; do mv $d/* $P/ 2>/dev/null; done
echo "parked: $(ls $P | wc -l) files, $(du -sb $P | cut -f1) bytes"
[ "${1:-}" = run ] || exit 0
n=$(ls $P/rpart?? | wc -l); [ "$n" = "$(cat $P/nparts)" ] || { echo "PERSISTENCE: $n parts"; exit 3; }
mkdir -p $P/w && cat $P/rpart?? | tar -x -C $P/w && rm -f $P/rpart?? || exit 4
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $P/site $P/w/*.whl || exit 5
export PYTHONPATH=$P/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import ray, pyarrow, pandas, torch; print('ray', ray.__version__, 'pyarrow', pyarrow.__version__, torch.cuda.get_device_name())" || exit 5
timeout ${2:-150} python3 bench/ray_scan.py --n 1000 --sample 256 --device cuda --dir $P/scan --json $OUT/ray_scan_gpu_ray.json 2>&1 | tail -25
