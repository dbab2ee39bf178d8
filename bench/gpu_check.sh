#!/usr/bin/env bash
# One prepared run on a lent GPU machine (DESIGN.md): build in place, GPU tests, GPU benchmarks,
# everything into one folder ($OUT, else bench/results/gpu). Budget: 8 minutes in all (the
# timeouts below sum to 480 s), so it fits a 15-minute device session with a rerun.
# The device machine has torch, triton and nvcc but no network: no dependency installs here.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/gpu}"
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"  # H100/H200 only: halves build time
export MAX_JOBS="${MAX_JOBS:-16}"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

start=$(date +%s)
timeout 200 pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
echo "build exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/build.log"
python -m decodekit.cli info | tee "$OUT/info.txt"

timeout 80 python -m pytest -m gpu -q -x --no-header -p no:cacheprovider tests 2>&1 | tail -40 | tee "$OUT/pytest_gpu.txt"

timeout 30 python -m decodekit.cli bench sampling --device cuda --quick --out "$OUT" 2>&1 | tail -60 | tee "$OUT/bench_sampling.txt"
# paged attention decode (B=32 ctx 4096, B=1 ctx 32768, fp16): target >= 80% of the copy bandwidth at B=32
timeout 40 python -m decodekit.cli bench paged_kv --device cuda --out "$OUT" 2>&1 | tail -40 | tee "$OUT/bench_paged_kv.txt"
# denoise: GB/s of reading the bf16 logits vs the copy ceiling (issue 4 target: >= 70% at B=8, W=256)
timeout 40 python -m decodekit.cli bench denoise --device cuda --quick --out "$OUT" 2>&1 | tail -50 | tee "$OUT/bench_denoise.txt"
# spec_verify: chain B=64 n=8 and tree B=16 N=64, V=32000 / 128256, cuda + triton + torch baselines
timeout 30 python -m decodekit.cli bench spec_verify --device cuda --quick --out "$OUT" 2>&1 | tail -40 | tee "$OUT/bench_spec_verify.txt"
# discrete_diffusion: one SEDD step at V=50257 (B=8, L=128), cuda + triton vs SEDD's torch step
timeout 30 python -m decodekit.cli bench discrete_diffusion --device cuda --quick --out "$OUT" 2>&1 | tail -20 | tee "$OUT/bench_discrete_diffusion.txt"
# generate: every decoder family (AR vs HF generate, speculative, diffusion), bf16, quick sizes
timeout 30 python -m decodekit.cli bench generate --device cuda --quick --out "$OUT" 2>&1 | tail -20 | tee "$OUT/bench_generate.txt"
echo "total $(( $(date +%s) - start )) s" | tee -a "$OUT/machine.txt"
