#!/usr/bin/env bash
# The main job on the embedded default: JiT vs V-Co (offline EfficientNet-Lite0 feature stream) on
# Fashion-MNIST with identical settings, on the CPU; both evaluated; a side-by-side report.
# Extra arguments are overrides for both runs, e.g. `bash scripts/demo.sh train.max_steps=100`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
# idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made steps up to 10x slower
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
OUT=${OUT:-runs/demo}
start=$(date +%s)
phase() {  # run one step and say how long it took
  local name=$1; shift
  local t0; t0=$(date +%s)
  "$@"
  echo "== $name: $(( $(date +%s) - t0 )) s (demo so far: $(( $(date +%s) - start )) s)"
}
phase "train JiT" .venv/bin/jit train --preset tiny --run-dir "$OUT/jit" "$@"
phase "train V-Co" .venv/bin/jit train --preset vco-tiny --run-dir "$OUT/vco" "$@"
phase "evaluate JiT" .venv/bin/jit evaluate "$OUT/jit"
phase "evaluate V-Co" .venv/bin/jit evaluate "$OUT/vco"
phase "compare" .venv/bin/jit compare "$OUT/jit" "$OUT/vco" --out "$OUT/report"
echo "demo finished in $(( $(date +%s) - start )) s; report: $OUT/report/index.html (metrics: $OUT/report/metrics.md)"
