#!/usr/bin/env bash
# GPU check for the performance paths (issue #18). Runs in under 8 minutes on one GPU:
#   1. the CUDA-marked tests (`pytest -m cuda`: CUDA vs CPU equality, prefix reuse on CUDA,
#      bf16 autocast) and the CPU/GPU-agnostic equality tests of tests/test_perf_paths.py;
#   2. a short scaling benchmark on the GPU (IG, GPT-2-small shape, 64..1024 tokens, mechattr vs the
#      SDPA and eager floors; peak memory from torch.cuda.max_memory_allocated);
#   3. prefix reuse speed-up on the GPU (occlusion, 20 and 320 tokens, GPT-2-small shape).
# Usage: bash benchmarks/gpu_check.sh [python]   (default: python on PATH). Output under $OUT or ./gpu_check_out.
set -u
PY=${1:-python}
OUTDIR=${OUT:-gpu_check_out}
mkdir -p "$OUTDIR"
export TOKENIZERS_PARALLELISM=false
start=$(date +%s)
"$PY" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""); sys.exit(0 if torch.cuda.is_available() else 3)' \
  || { echo "no CUDA device: nothing to check here"; exit 3; }
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv | tee "$OUTDIR/nvidia-smi.txt"

echo "== 1. tests (cuda-marked + equality) =="
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_perf_paths.py 2>&1 | tail -25 | tee "$OUTDIR/tests.txt"

echo "== 2. scaling on the GPU =="
timeout 180 "$PY" -m benchmarks.bench_scaling --device cuda --lengths 64,256,1024 --steps 4 \
  --tools mechattr,floor,floor_eager --timeout 60 \
  --json "$OUTDIR/scaling-gpt2-small-cuda.json" --figure "$OUTDIR/scaling-gpt2-small-cuda.png" 2>&1 | tail -15 | tee "$OUTDIR/scaling.txt"

echo "== 3. prefix reuse on the GPU =="
timeout 90 "$PY" -m benchmarks.bench_prefix --device cuda --models gpt2-small-shape --tokens 20,320 \
  --methods occlusion --rounds 2 2>&1 | grep -E '^\||load' | tee "$OUTDIR/prefix.txt"

echo "done in $(( $(date +%s) - start )) s"
