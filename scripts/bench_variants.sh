#!/usr/bin/env bash
# JAX-only variants of one model (XLA CPU flags, scan vs unroll, bf16), each in its own process:
#   bash scripts/bench_variants.sh [MODEL] [BATCH] [OUT_DIR]
# Prints one markdown row per variant (compile s and img/s of inference and train step); JSON per variant.
set -uo pipefail
MODEL=${1:-hrnet_w18_small_v1}
BATCH=${2:-4}
OUT=${3:-/tmp/hrnet_bench_variants}
PY=${PYTHON:-python}
mkdir -p "$OUT"
run() {  # name, XLA_FLAGS, extra bench args
  local tag=$1 flags=$2; shift 2
  XLA_FLAGS="$flags" $PY -m hrnet_jax.bench --xla-onednn keep --no-torch --no-unfolded --models "$MODEL" --batch "$BATCH" \
    --warmup 1 --iters 3 --json "$OUT/$tag.json" "$@" > /dev/null 2> "$OUT/$tag.err" || { echo "| $tag | failed |"; return; }
  $PY - "$OUT/$tag.json" "$tag" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1])); m = r["models"][0]; j = m["jax"]; b = r["config"]["batches"][-1]
cs = j["compile_s"]
print(f"| {sys.argv[2]} | {m['name']} | {cs.get(f'infer_b{b}')} | {j.get(f'infer_b{b}', 0):.2f} | "
      f"{cs.get('train')} | {j.get('train', 0):.2f} | {j['gflops'].get(f'infer_b{b}')} | {m['load']} | {r['machine']['jax']} |")
PYEOF
}
echo "| variant | model | compile infer s | infer img/s | compile train s | train img/s | GFLOP/s infer | load | jax |"
echo "|---|---|---|---|---|---|---|---|---|"
for v in ${VARIANTS:-default onednn noscan unroll1 nothunk fastmath bf16}; do
  case $v in
    default) run default "" ;;
    noscan) run noscan "" --no-scan ;;
    unroll1) run unroll1 "" --scan-unroll 1 ;;
    onednn) run onednn "--xla_cpu_use_onednn=true" ;;
    nothunk) run nothunk "--xla_cpu_use_thunk_runtime=false" ;;
    fastmath) run fastmath "--xla_cpu_enable_fast_math=true" ;;
    bf16) run bf16 "" --dtype bfloat16 ;;
  esac
done
