#!/usr/bin/env bash
# The prepared CPU benchmark set (2 threads; ~1.5 h on 2 shared cores): the figures of benchmarks/RESULTS.md.
#
#   bash benchmarks/run_all.sh            # everything
#   bash benchmarks/run_all.sh quick      # the tiny config only (~15 min)
#   bash benchmarks/run_all.sh compile    # also torch.compile on CPU for the tiny config (compiling takes minutes)
#
# Every script measures its baselines in the same run (interleaved rounds) and reports ratios; logs and
# JSON go to benchmarks/results/. On CPU the step time is the process CPU time / threads, with
# OMP_WAIT_POLICY=PASSIVE (see RESULTS.md). GPU figures: bash benchmarks/gpu.sh on an H100/H200.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
R=benchmarks/results
mkdir -p "$R"
run() { local name=$1; shift; echo "### $name: $*"; "$PY" "$@" 2>&1 | grep -v "RANDOM weights" | tee "$R/$name.txt"; }

run flops benchmarks/flops.py --measure --json "$R/flops.json"
# the embedded default (tiny / vco-tiny presets): JiT-S/4, 32 px, 1 channel, batch 64; V-Co with the real
# EfficientNet-Lite0 weights
run train_s4_cpu benchmarks/bench_train.py --model JiT-S/4 --batch 64 --channels 1 --device cpu --steps 5 --warmup 1 \
  --encoder efficientnet_lite0 --levers attention,ckpt,fused --memory off --json "$R/train_s4_cpu.json"
if [ "${1:-}" = compile ]; then
  run train_s4_cpu_compile benchmarks/bench_train.py --model JiT-S/4 --batch 64 --channels 1 --device cpu --steps 5 \
    --warmup 2 --encoder efficientnet_lite0 --levers compile --variants "ours,ours +compile" --memory off \
    --json "$R/train_s4_cpu_compile.json"
fi
run sample_s4_cpu benchmarks/bench_sample.py --model JiT-S/4 --batch 8 --channels 1 --device cpu --sample-steps 50 \
  --repeats 2 --warmup 1 --encoder efficientnet_lite0 --json "$R/sample_s4_cpu.json"
[ "${1:-}" = quick ] && exit 0
# JiT-B/16 vs V-Co-B/16 (DINOv2-B/14 with random weights: same cost), batch 4, 256 px
run train_b16_cpu benchmarks/bench_train.py --model JiT-B/16 --batch 4 --device cpu --steps 3 --warmup 1 \
  --memory off --json "$R/train_b16_cpu.json"
# peak memory (one subprocess per variant)
run memory_b16_cpu benchmarks/bench_train.py --model JiT-B/16 --batch 4 --device cpu --steps 0 --nets vco,jit \
  --variants "ours,ours +ckpt,official" --json "$R/memory_b16_cpu.json"
# Heun sampling at B/16 on 2 cores: 2 Heun steps measured, Heun-50 extrapolated by the evaluation count
run sample_b16_cpu benchmarks/bench_sample.py --model JiT-B/16 --batch 2 --device cpu --sample-steps 2 \
  --repeats 2 --warmup 1 --json "$R/sample_b16_cpu.json"
run levers_cpu benchmarks/bench_levers.py --device cpu --batch 4 --repeats 5 --warmup 1 --json "$R/levers_cpu.json"
# per-GPU training memory on an 80 GB card, estimated on the CPU (saved-tensor count; ~3 min, 1 thread)
OMP_NUM_THREADS=1 run memory_estimate benchmarks/memory_estimate.py --json "$R/memory_estimate.json"
