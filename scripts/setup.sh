#!/usr/bin/env bash
# Idempotent setup on a fresh Debian 12 machine: apt data (+ SLURM for the tests), a venv, the package.
#   scripts/setup.sh          # runtime: Fashion-MNIST + venv + jit-vco[dev,tensorboard,wandb]
#   scripts/setup.sh --slurm  # also the SLURM packages for the real-cluster tests
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "apt: installing ${missing[*]}"
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  }
}
apt_install dataset-fashion-mnist
if [ "${1:-}" = "--slurm" ]; then bash scripts/slurm-cluster.sh install; fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import jit_core, torch, timm, torch_fidelity, pytest, sklearn, tensorboard, wandb, jit_reg, jit_redi" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.jit-installed ]; then
  echo "pip: installing jit-vco[dev,tensorboard,wandb] into .venv (torch 2.14.1 / torchvision 0.29.1)"
  # -qq: errors only (one -q still prints a warning per ignored find-links location, a screenful); a failure still
  # shows pip's error and stops the script (set -e)
  .venv/bin/pip install -qq --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" -e ".[dev,tensorboard,wandb]"   # the trackers: tests/test_trackers.py
  # the example third-party plugins (REPA, REG) are installed like any user plugin would be
  for example in repa_plugin reg_plugin redi_plugin; do
    if [ -f "examples/$example/pyproject.toml" ]; then
      .venv/bin/pip install -qq --disable-pip-version-check --no-deps -e "examples/$example"
    fi
  done
  touch .venv/.jit-installed
fi
