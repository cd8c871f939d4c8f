#!/usr/bin/env bash
# The test command: setup, a real local SLURM cluster, the whole test suite, cluster down again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --slurm
export HF_HUB_OFFLINE=1 JIT_REQUIRE_SLURM=${JIT_REQUIRE_SLURM:-1}
started_slurm=0
if ! .venv/bin/python -c "from slurm.cluster import cluster_available as c; import sys; sys.exit(0 if c()[0] else 1)"; then
  bash scripts/slurm-cluster.sh up
  started_slurm=1
fi
status=0
.venv/bin/lint-imports || status=$?      # the architecture's contracts (pyproject.toml [tool.importlinter])
.venv/bin/mypy || status=$?              # zero type errors in jit_core, vco_plugin, slurm (pyproject.toml [tool.mypy])
.venv/bin/python -m pytest "$@" || status=$?
# the core without V-Co: vco_plugin not importable, no plugin entry points (tests/core/without_vco.py)
.venv/bin/python -m tests.core.without_vco -q -p no:cacheprovider tests/core || status=$?
for example in repa_plugin reg_plugin redi_plugin; do       # the example plugins' own suites
  if [ -d "examples/$example/tests" ]; then .venv/bin/python -m pytest -q "examples/$example/tests" || status=$?; fi
done
[ "$started_slurm" = 1 ] && bash scripts/slurm-cluster.sh down || true
exit $status
