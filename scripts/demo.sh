#!/usr/bin/env bash
# The main job on the embedded default: JiT vs V-Co (offline EfficientNet-Lite0 feature stream) on
# Fashion-MNIST, identical settings, CPU; then evaluation and a side-by-side report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
OUT=${OUT:-runs/demo}
.venv/bin/jit train --preset tiny --run-dir "$OUT/jit" "$@"
.venv/bin/jit train --preset vco-tiny --run-dir "$OUT/vco" "$@"
.venv/bin/jit compare "$OUT/jit" "$OUT/vco" --out "$OUT/report"
echo "report: $OUT/report/index.html"
