#!/usr/bin/env bash
# One call on a GPU machine: the HRNet benchmark in bf16 at large batches, JAX vs timm eager and torch.compile
# (channels_last, cudnn.benchmark) in the same run (each model: a fresh JAX process, then fresh PyTorch ones).
#   bash scripts/bench_gpu.sh [OUT_DIR]
# Needs jax[cuda], flax, optax, torch (CUDA build) and timm in the active environment. Writes
# OUT_DIR/bench_gpu_pose.json (pose W32 256x192 incl. torch.compile: the H100 goal) and
# OUT_DIR/bench_gpu_rest.json (the other models, eager only), prints the markdown tables (the machine line names
# the card: device gpu:<kind>). Each part has its own time limit (POSE_S, REST_S seconds) so one slow compile
# cannot take the other's results with it; the JSON is rewritten after every model.
set -uo pipefail
OUT=${1:-${OUT:-.}}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX allocates device memory as it needs it
export PYTHONUNBUFFERED=1
POSE_S=${POSE_S:-330}
REST_S=${REST_S:-170}
INFER_BATCH=${INFER_BATCH:-1,256}
TRAIN_BATCH=${TRAIN_BATCH:-128}
REST=${REST:-hrnet_w32,hrnet_w48,pose_hrnet_w32@384x288}
COMMON="--dtype bfloat16 --warmup 3 --iters 10 --no-unfolded"
nvidia-smi -L 2>/dev/null || true
${PYTHON:-python3} -c "import jax, flax, torch, timm; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__, 'timm', timm.__version__)"
timeout "$POSE_S" ${PYTHON:-python3} -m hrnet_jax.bench $COMMON --batch "$INFER_BATCH" --train-batch "$TRAIN_BATCH" \
  --models pose_hrnet_w32@256x192 --torch-compile --json "$OUT/bench_gpu_pose.json"
echo "# pose part exit $?"
timeout "$REST_S" ${PYTHON:-python3} -m hrnet_jax.bench $COMMON --batch "$INFER_BATCH" --train-batch "$TRAIN_BATCH" \
  --models "$REST" --json "$OUT/bench_gpu_rest.json"
echo "# rest part exit $?"
