#!/usr/bin/env bash
# The main job on the embedded default: JiT vs V-Co (offline EfficientNet-Lite0 feature stream) on
# Fashion-MNIST with identical settings, 300 steps (recognisable samples), 3 training seeds each, on the CPU
# (two runs at a time), every run evaluated, then one report with a 95 % interval per arm and a verdict that
# states the parameter gap (`jit study vco-tiny-pair`). About 16.5 min from a fresh clone on an idle 2-core
# machine (docs/embedded-comparison.md, section 4).
# Extra arguments go to `jit study`: overrides for every run, e.g. `bash scripts/demo.sh train.max_steps=400`,
# or `--quick` for the 150-step first look (about 11 min, in runs/demo-quick);
# SEEDS=0,1 or OUT=runs/other change the seeds or the folder. Re-running resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
# idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made steps up to 10x slower
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
case " $* " in *" --quick "*) OUT=${OUT:-runs/demo-quick} ;; *) OUT=${OUT:-runs/demo} ;; esac
start=$(date +%s)
.venv/bin/jit study vco-tiny-pair --out "$OUT" ${SEEDS:+--seeds "$SEEDS"} "$@"
echo "demo finished in $(( $(date +%s) - start )) s; report: $OUT/report/index.html (summary: $OUT/study.md)"
