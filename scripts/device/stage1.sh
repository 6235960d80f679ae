#!/usr/bin/env bash
# Device call 1 of the SmolLM2 zoo run: park the first model chunk in a folder that survives between
# calls while the machine stays held, and report the software there.
P=/root/zp
mkdir -p $P && cp .chunks/p0/part0 $P/ && ls -la $P
date -u +%FT%TZ > $P/stage1_at
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
python3 -c "import torch, transformers, peft, safetensors, pyarrow, typer, rich, numpy, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'pyarrow', pyarrow.__version__, 'numpy', numpy.__version__)"
python3 -c "import platformdirs" 2>&1 | tail -1
python3 -c "import gguf" 2>&1 | tail -1
df -h /root | tail -1; nproc; free -g | head -2
