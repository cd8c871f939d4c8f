"""Lanes: how `jit study` / `scripts/demo.sh` fill a small CPU machine - one run with every core vs one run per
core (each with 1 thread), on the real `vco-tiny` (or `tiny`) training, end to end through `jit train`.

    python benchmarks/bench_lanes.py --preset vco-tiny --steps 30

Both layouts train the same number of runs (``--runs``, default = cores) of ``--steps`` steps each: ``serial``
runs them one after another with all cores; ``lanes`` runs them side by side, one core each. The figure is
runs finished per hour and the ratio lanes/serial, measured in this invocation. Nothing about a run's
mathematics changes (the same configs and seeds; only thread counts differ, so results agree to float
rounding); the process start-up (imports, data, encoder) counts, as it does in a study.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train(preset: str, steps: int, run_dir: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "jit_core", "train", "--preset", preset, "--run-dir", str(run_dir),
           f"train.max_steps={steps}", f"train.ckpt_every={steps}", "vco.calib_images=256" if "vco" in preset else
           "train.log_every=10"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="vco-tiny")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--runs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for i in range(args.runs):
            if train(args.preset, args.steps, Path(tmp) / f"serial-{i}", cores).wait():
                sys.exit("a serial run failed")
        serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        procs = [train(args.preset, args.steps, Path(tmp) / f"lane-{i}", 1) for i in range(args.runs)]
        if any(p.wait() for p in procs):
            sys.exit("a lane run failed")
        lanes = time.perf_counter() - t0
    print(f"{args.preset}, {args.runs} runs x {args.steps} steps on {cores} cores")
    print(f"  serial ({cores} threads each): {serial:7.1f} s  = {3600 * args.runs / serial:6.1f} runs/h")
    print(f"  lanes  (1 thread each)    : {lanes:7.1f} s  = {3600 * args.runs / lanes:6.1f} runs/h")
    print(f"  lanes / serial throughput : {serial / lanes:.2f}x")


if __name__ == "__main__":
    main()
