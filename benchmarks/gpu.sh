#!/usr/bin/env bash
# The prepared GPU benchmark set (one H100 or H200): prints everything in one go, in under 8 minutes.
#
#   bash benchmarks/gpu.sh            # writes JSON next to the printed tables into $OUT or benchmarks/results/gpu
#   bash benchmarks/gpu.sh --dry      # every stage on the CPU at a tiny size (JiT-T/4, 2 images, 1 step):
#                                     # checks the script end to end in about a minute, no GPU needed
#
# Stages (each under its own time limit; a stage that would overrun the overall budget is cut or skipped,
# so the figures of the earlier stages are always printed):
#   1. analytic FLOPs (JiT vs paper, V-Co with DINOv2);
#   2. train step JiT-B/16 and V-Co-B/16, 128 images per GPU, bf16: official (exact attention, unfused AdamW)
#      vs ours (SDPA, fused AdamW) and each lever on/off (attention, fused AdamW, bf16, activation checkpointing),
#      images/s, MFU against the GPU's dense bf16 peak, peak memory. V-Co's exact-attention variants keep
#      ~340 MB of attention scores per image (benchmarks/exact_attention_batch.py): they run in their own
#      stage at the largest batch that fits the card (64 on 80 GB), next to ours at that batch;
#   3. sampling JiT-B/16 and V-Co-B/16, Heun-50 with CFG 2.9, 32 images per call: official (exact, two-pass CFG),
#      two-pass (SDPA), ours (SDPA, batched CFG);
#   4. micro-benchmarks behind the patch proposals (V-Co's masked joint attention, fused vs foreach AdamW);
#   5. V-Co-H/16, 16 images per GPU: ours vs ours + activation checkpointing (time and peak memory; without
#      checkpointing it may not fit on an 80 GB H100, which is reported as OOM);
#   6. torch.compile on/off for the B/16 train step (ours = SDPA + compile + fused; eager; official).
# A stage that fails (OOM, an error) does not stop the others; the summary at the end lists every stage's
# exit status and the files its figures are in.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[ "${1:-}" = "--dry" ] && DRY=1
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && { [ "$DRY" = 1 ] || .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }; then
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
SUMMARY=()

if [ "$DRY" = 1 ]; then   # the same stages on the CPU at a tiny size: B = base model, H = large model
  DEV=cpu; THREADS=2; B=JiT-T/4; H=JiT-T/4; BATCH=2; HBATCH=2; SBATCH=2; STEPS="--steps 1 --warmup 0"
  TINY=(--encoder efficientnet_lite0 --num-classes 10 --memory off); STINY=(--encoder efficientnet_lite0 --num-classes 10 --sample-steps 2 --repeats 1 --warmup 0)
  LTINY=(--batch 2 --heads 2 --head-dim 8 --tokens 16 --repeats 1 --warmup 0 --adam-model JiT-T/4)
  VCO_EXACT_BATCH=2
else
  DEV=cuda; THREADS=16; B=JiT-B/16; H=JiT-H/16; BATCH=128; HBATCH=16; SBATCH=32; STEPS="--steps 5 --warmup 2"
  TINY=(); STINY=(--repeats 2 --warmup 1); LTINY=(--batch 128 --repeats 10 --warmup 3)
  VCO_EXACT_BATCH=$($PY benchmarks/exact_attention_batch.py --model JiT-B/16 --streams 2 --max-batch 128 2>/dev/null || echo 32)
fi

# V-Co is enabled through its entry point: register it when the package is not installed (offline, no deps).
if ! $PY -c "import importlib.metadata as m, sys; sys.exit(0 if any(e.name == 'vco' for e in m.entry_points(group='jit_core.plugins')) else 1)" 2>/dev/null; then
  $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$RES/pip.log" 2>&1 \
    || echo "# NOTE: pip install -e . failed (see $RES/pip.log): V-Co will be reported as unavailable"
fi

stage() {  # stage LIMIT_SECONDS NAME COMMAND...
  local limit=$1 name=$2; shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 40 ]; then echo "### SKIPPED $name: time budget spent"; SUMMARY+=("skipped  $name"); return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo; echo "### $name (limit ${limit}s, $(( $(date +%s) - START ))s elapsed)"
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | grep -v "RANDOM weights"
  local rc=${PIPESTATUS[0]}
  echo "### $name: exit $rc, $(( $(date +%s) - START ))s elapsed"
  local status="ok"
  [ "$rc" = 124 ] && status="timeout"
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && status="FAILED($rc)"
  SUMMARY+=("$status  $name")
}

echo "### device"
if [ "$DRY" = 1 ]; then
  echo "dry run on the CPU: $($PY -c "import torch; print('torch', torch.__version__)")"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | head -3
  $PY -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, torch.cuda.get_device_name(0))"
  echo "V-Co exact-attention baseline batch: $VCO_EXACT_BATCH per GPU (benchmarks/exact_attention_batch.py)"
fi

stage 25 "flops" $PY benchmarks/flops.py --json "$RES/flops.json"
stage 90 "train B/16 x$BATCH: levers (JiT)" $PY benchmarks/bench_train.py --model $B --batch $BATCH --device $DEV \
  --threads $THREADS --nets jit --levers attention,fused,bf16,ckpt $STEPS "${TINY[@]}" --json "$RES/train_b16.json"
stage 60 "train V-Co-B/16 x$BATCH: levers (fast attention)" $PY benchmarks/bench_train.py --model $B --batch $BATCH \
  --device $DEV --threads $THREADS --nets vco --levers attention,fused,bf16,ckpt --variants "ours,ours -fused,ours -bf16,ours +ckpt" \
  $STEPS "${TINY[@]}" --json "$RES/train_vco_b16.json"
stage 60 "train V-Co-B/16 x$VCO_EXACT_BATCH: official exact-attention baseline" $PY benchmarks/bench_train.py --model $B \
  --batch $VCO_EXACT_BATCH --device $DEV --threads $THREADS --nets vco --levers attention,fused,bf16 \
  --variants "official,ours -fast-attn,ours" $STEPS "${TINY[@]}" --json "$RES/train_vco_b16_exact.json"
stage 50 "sample B/16 Heun-50" $PY benchmarks/bench_sample.py --model $B --batch $SBATCH --device $DEV --threads $THREADS \
  "${STINY[@]}" --json "$RES/sample_b16.json"
stage 30 "levers micro (V-Co attention mask, AdamW)" $PY benchmarks/bench_levers.py --device $DEV --threads $THREADS \
  "${LTINY[@]}" --json "$RES/levers.json"
stage 70 "train V-Co-H/16 x$HBATCH: activation checkpointing" $PY benchmarks/bench_train.py --model $H --batch $HBATCH \
  --device $DEV --threads $THREADS --nets vco --levers fused,ckpt --variants "ours,ours +ckpt" $STEPS "${TINY[@]}" \
  --json "$RES/train_vco_h16.json"
if [ "$DRY" = 1 ]; then   # compile needs CUDA to mean anything; the dry run checks the flag is accepted
  stage 60 "train B/16 x$BATCH: torch.compile" $PY benchmarks/bench_train.py --model $B --batch $BATCH --device $DEV \
    --threads $THREADS --nets jit --levers fused --variants "ours" $STEPS "${TINY[@]}" --json "$RES/train_b16_compile.json"
else
  stage 90 "train B/16 x$BATCH: torch.compile" $PY benchmarks/bench_train.py --model $B --batch $BATCH --device $DEV \
    --threads $THREADS --nets jit --levers compile,fused --variants "official,ours,eager" $STEPS "${TINY[@]}" \
    --json "$RES/train_b16_compile.json"
fi
echo; echo "### summary ($(( $(date +%s) - START ))s; figures in $RES)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
