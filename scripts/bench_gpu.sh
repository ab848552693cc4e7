#!/usr/bin/env bash
# One call on a GPU machine: the HRNet benchmark in bf16 at larger batches, JAX vs timm eager and torch.compile.
#   bash scripts/bench_gpu.sh [OUT_DIR]
# Needs jax[cuda], torch (CUDA build) and timm in the active environment. Writes OUT_DIR/bench_gpu_{eager,compile}.json
# and prints the markdown tables (with the card's name in the machine line: device cuda:<kind>).
set -euo pipefail
OUT=${1:-${OUT:-.}}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # torch runs in the same process
MODELS=${MODELS:-hrnet_w18,hrnet_w32,hrnet_w48,pose_hrnet_w32@256x192,pose_hrnet_w32@384x288,seg_hrnet_w48@512x1024}
COMMON="--dtype bfloat16 --batch 1,128 --train-batch 64 --warmup 3 --iters 10 --models $MODELS"
python -m hrnet_jax.bench $COMMON --json "$OUT/bench_gpu_eager.json"
python -m hrnet_jax.bench $COMMON --torch-compile --no-unfolded --json "$OUT/bench_gpu_compile.json"
