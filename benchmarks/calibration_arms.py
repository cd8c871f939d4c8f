"""V-Co's calibration arms on the tiny config: the feature loss each one trains on (docs/embedded-comparison.md).

    python benchmarks/calibration_arms.py --steps 30 --seeds 0,1,2

Per seed, one short ``vco-tiny`` run per arm (JiT-S/4, Fashion-MNIST 32 px, batch 64, EfficientNet-Lite0 stream),
all from the same feature statistics (computed once per seed, 2048 training images). Within a seed every arm
starts from the same weights and draws the same batches, times and noises (set-up runs under a forked RNG), so
step 1 compares the arms' losses on identical inputs; the mean over the steps shows how they train. Arms:
``rms`` (the recipe), ``none`` (table4_run_a as released), ``rms alpha=1`` (must equal ``none``),
``time_shift`` (table4_run_b as released) and ``time_shift_corrected``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

ARMS = {
    "rms": [],
    "none": ["vco.calibration=none"],
    "rms alpha=1": ["vco.rms_factor=1.0"],
    "time_shift": ["vco.calibration=time_shift"],
    "time_shift_corrected": ["vco.calibration=time_shift_corrected"],
}


def feature_losses(run: Path) -> list[float]:
    return [json.loads(line)["loss/feature"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from jit_core.plugins.presets import build_config
    from jit_core.training import train
    root = Path(tempfile.mkdtemp(prefix="calibration-arms-"))
    rows = {arm: [] for arm in ARMS}
    for seed in [int(s) for s in args.seeds.split(",")]:
        stats = None
        for arm, overrides in ARMS.items():
            run = root / f"seed-{seed}" / arm.replace(" ", "_")
            keys = [f"train.seed={seed}", f"train.max_steps={args.steps}", "train.log_every=1",
                    "train.ckpt_every=100000", "train.device=cpu", *overrides]
            if stats is not None:
                keys.append(f"vco.stats={stats}")
            train(build_config("vco-tiny", None, (), keys, run), run, progress=False)
            stats = stats or run / "vco_stats.safetensors"
            losses = feature_losses(run)
            rows[arm].append((losses[0], statistics.fmean(losses)))
            print(f"seed {seed} {arm:>22}: step 1 {losses[0]:.6g}  mean of {len(losses)} steps "
                  f"{statistics.fmean(losses):.6g}", flush=True)
    print("\n| arm | loss/feature at step 1 (per seed) | mean over the steps (per seed) |\n|---|---|---|")
    for arm, values in rows.items():
        first = ", ".join(f"{a:.4g}" for a, _ in values)
        mean = ", ".join(f"{b:.4g}" for _, b in values)
        print(f"| {arm} | {first} | {mean} |")


if __name__ == "__main__":
    main()
