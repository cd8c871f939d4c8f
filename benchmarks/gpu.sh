#!/usr/bin/env bash
# The prepared GPU benchmark set (one H100 or H200): prints everything in one go, in under 8 minutes.
#
#   bash benchmarks/gpu.sh            # writes JSON next to the printed tables into $OUT or benchmarks/results/gpu
#
# Stages (each under its own time limit; a stage that would overrun the overall budget is cut or skipped,
# so the figures of the earlier stages are always printed):
#   1. analytic FLOPs (JiT vs paper, V-Co with DINOv2);
#   2. train step JiT-B/16 and V-Co-B/16, 128 images per GPU, bf16: official (exact attention, unfused AdamW)
#      vs ours (SDPA, fused AdamW) and each lever on/off (attention, fused AdamW, bf16, activation checkpointing),
#      images/s, MFU against the GPU's dense bf16 peak, peak memory;
#   3. sampling JiT-B/16 and V-Co-B/16, Heun-50 with CFG 2.9, 32 images per call: official (exact, two-pass CFG),
#      two-pass (SDPA), ours (SDPA, batched CFG);
#   4. micro-benchmarks behind the patch proposals (V-Co's masked joint attention, fused vs foreach AdamW);
#   5. V-Co-H/16, 16 images per GPU: ours vs ours + activation checkpointing (time and peak memory; without
#      checkpointing it may not fit on an 80 GB H100, which is reported as OOM);
#   6. torch.compile on/off for the B/16 train step (ours = SDPA + compile + fused; eager; official).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    PY=.venv/bin/python
  else
    PY=python3
  fi
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
RES=${OUT:-benchmarks/results/gpu}
mkdir -p "$RES"
START=$(date +%s)
BUDGET=${GPU_BUDGET_S:-465}   # seconds for the whole script (the device call gets 8 minutes)

# V-Co is enabled through its entry point: register it when the package is not installed (offline, no deps).
if ! $PY -c "import importlib.metadata as m, sys; sys.exit(0 if any(e.name == 'vco' for e in m.entry_points(group='jit_core.plugins')) else 1)" 2>/dev/null; then
  $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$RES/pip.log" 2>&1 \
    || echo "# NOTE: pip install -e . failed (see $RES/pip.log): V-Co will be reported as unavailable"
fi

stage() {  # stage LIMIT_SECONDS NAME COMMAND...
  local limit=$1 name=$2; shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 40 ]; then echo "### SKIPPED $name: time budget spent"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo; echo "### $name (limit ${limit}s, $(( $(date +%s) - START ))s elapsed)"
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | grep -v "RANDOM weights"
  echo "### $name: exit ${PIPESTATUS[0]}, $(( $(date +%s) - START ))s elapsed"
}

echo "### device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | head -3
$PY -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, torch.cuda.get_device_name(0))"

stage 25 "flops" $PY benchmarks/flops.py --json "$RES/flops.json"
stage 150 "train B/16 x128: levers" $PY benchmarks/bench_train.py --model JiT-B/16 --batch 128 --device cuda --threads 16 \
  --levers attention,fused,bf16,ckpt --steps 5 --warmup 2 --json "$RES/train_b16.json"
stage 90 "sample B/16 Heun-50" $PY benchmarks/bench_sample.py --model JiT-B/16 --batch 32 --device cuda --threads 16 \
  --repeats 2 --warmup 1 --json "$RES/sample_b16.json"
stage 40 "levers micro (V-Co attention mask, AdamW)" $PY benchmarks/bench_levers.py --device cuda --threads 16 --batch 128 \
  --repeats 10 --warmup 3 --json "$RES/levers.json"
stage 110 "train V-Co-H/16 x16: activation checkpointing" $PY benchmarks/bench_train.py --model JiT-H/16 --batch 16 \
  --device cuda --threads 16 --nets vco --levers fused,ckpt --variants "ours,ours +ckpt" --steps 4 --warmup 2 \
  --json "$RES/train_vco_h16.json"
stage 150 "train B/16 x128: torch.compile" $PY benchmarks/bench_train.py --model JiT-B/16 --batch 128 --device cuda --threads 16 \
  --levers compile,fused --variants "official,ours,eager" --steps 5 --warmup 3 --json "$RES/train_b16_compile.json"
echo; echo "### done in $(( $(date +%s) - START ))s"
