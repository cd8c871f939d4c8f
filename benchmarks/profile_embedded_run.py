"""Where one embedded study run spends its time: start-up, each part of a training step, checkpoints, and the
evaluation (sampler, the metric's classifier, reference statistics, bootstrap).

    python benchmarks/profile_embedded_run.py --preset vco-tiny --steps 20 --threads 1
    python benchmarks/profile_embedded_run.py --preset tiny --steps 20 --threads 1 --num-images 150

The run is the real one (``jit_core.training.Trainer`` on the preset, then ``evaluate_run`` as ``jit evaluate``
calls it), with timers wrapped around the functions each phase runs. A wrapped phase's time includes the phases
it calls (the network forward includes nothing else; the hybrid loss's forward includes the encoder's pass over
x-hat; ``backward`` is every backward pass, the encoder's through x-hat included). ``other`` is the step's
remainder (noising, null branch, v-loss, batch, gradient clip). Times are wall seconds; on a shared machine
they are upper bounds, so the script prints the load average before and after, and the median step's CPU time
beside its wall time (one thread: the CPU time is what the step costs when it has a core to itself).
"""
from __future__ import annotations

import sys

from common import early_threads

_THREADS = early_threads(sys.argv, default=1)

import argparse
import contextlib
import functools
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

TIMES: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)
_ACTIVE: set[str] = set()


def timed(owner, attr: str, phase: str) -> None:
    """Replace ``owner.attr`` by a wrapper that adds its wall time to ``phase`` (outermost call only)."""
    fn = getattr(owner, attr)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if phase in _ACTIVE:
            return fn(*args, **kwargs)
        _ACTIVE.add(phase)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[phase] += time.perf_counter() - t0
            CALLS[phase] += 1
            _ACTIVE.discard(phase)
    setattr(owner, attr, wrapper)


@contextlib.contextmanager
def phase(name: str):
    t0 = time.perf_counter()
    yield
    TIMES[name] += time.perf_counter() - t0
    CALLS[name] += 1


STEPS: list[tuple[float, float]] = []     # (wall, CPU) seconds of each training step


def time_steps(trainer_cls) -> None:
    fn = trainer_cls.train_step

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        w, c = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            STEPS.append((time.perf_counter() - w, time.process_time() - c))
    trainer_cls.train_step = wrapper


def instrument(preset_has_vco: bool) -> None:
    from jit_core.eval import classifier, evaluate, stats
    from jit_core.model import jit as jit_model
    from jit_core.training import checkpointing, state
    timed(jit_model.JiT, "forward", "network forward")
    timed(torch.autograd, "backward", "backward")
    timed(torch.optim.AdamW, "step", "AdamW")
    timed(state.EMA, "update", "EMA updates")
    timed(checkpointing, "save", "checkpoint")
    timed(evaluate, "generate_blocks", "eval: sampler")
    timed(classifier, "get_classifier", "eval: classifier (load)")
    timed(classifier, "_reference_features", "eval: reference statistics")
    timed(classifier, "predict", "eval: classifier features")
    timed(stats, "bootstrap_interval", "eval: bootstrap intervals")
    if preset_has_vco:
        from vco_plugin import plugin
        timed(plugin.FeatureStream, "clean", "feature target (encoder or cache)")
        timed(plugin.VCoRun, "jit_loss_terms", "hybrid loss forward (encoder on x-hat, f+)")


def load() -> str:
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="vco-tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--num-images", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--metrics", default="auto", help="the evaluation's metrics (none: sampling only)")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of the run")
    args = ap.parse_args()
    print(f"threads {_THREADS}, load average before: {load()}")
    t_import = time.perf_counter()
    from jit_core.plugins.presets import build_config
    from jit_core.training import Trainer
    TIMES["imports"] = time.perf_counter() - t_import
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cfg = build_config(args.preset, None, (), (f"train.max_steps={args.steps}", "train.ckpt_every=100000",
                                                    *args.overrides), run_dir)
        instrument("vco" in cfg.plugins)
        time_steps(Trainer)
        with phase("start-up (checks, model, encoder, statistics)"):
            trainer = Trainer(cfg, run_dir)
        step_phases = [k for k in TIMES if k != "imports" and not k.startswith("start-up")]
        before = {k: TIMES[k] for k in step_phases}
        t0 = time.perf_counter()
        trainer.progress = False
        trainer.fit()
        train_s = time.perf_counter() - t0
        trained = {k: TIMES[k] - before.get(k, 0.0) for k in list(TIMES)}
        from jit_core.eval.evaluate import evaluate_run
        with phase("eval: total"):
            evaluate_run(run_dir, num_images=args.num_images, save="none", progress=False, metrics=args.metrics)
    steps = args.steps
    print(f"preset {args.preset}, {steps} steps, {args.num_images} images evaluated; load average after: {load()}")
    print(f"{'phase':<48} {'total s':>8} {'per step ms':>12} {'calls':>6}")
    print(f"{'imports':<48} {TIMES['imports']:8.2f}")
    print(f"{'start-up (checks, model, encoder, statistics)':<48} {TIMES['start-up (checks, model, encoder, statistics)']:8.2f}")
    accounted = 0.0
    for k in ["feature target (encoder or cache)", "network forward", "hybrid loss forward (encoder on x-hat, f+)",
              "backward", "AdamW", "EMA updates", "checkpoint"]:
        if k in trained:
            v = trained[k]
            accounted += v
            print(f"  {k:<46} {v:8.2f} {1000 * v / steps:12.1f} {CALLS[k]:6d}")
    print(f"  {'other (noising, v-loss, batches, clip, logs)':<46} {train_s - accounted:8.2f} "
          f"{1000 * (train_s - accounted) / steps:12.1f}")
    print(f"{'training loop':<48} {train_s:8.2f} {1000 * train_s / steps:12.1f}")
    steady = STEPS[min(5, len(STEPS) - 1):]      # after the first steps (allocator warm-up; compilation)
    print(f"{'one step, median after the first 5 (wall / CPU)':<48} {'':>8} "
          f"{1000 * statistics.median(w for w, _ in steady):7.1f} / {1000 * statistics.median(c for _, c in steady):.1f}")
    print(f"{'all steps, CPU s (first 5: compilation, if any)':<48} {sum(c for _, c in STEPS):8.2f}   "
          f"first 5: {sum(c for _, c in STEPS[:5]):.2f}")
    for k in ["eval: sampler", "eval: classifier (load)", "eval: reference statistics", "eval: classifier features",
              "eval: bootstrap intervals", "eval: total"]:
        print(f"{k:<48} {TIMES.get(k, 0.0):8.2f} {'':>12} {CALLS.get(k, 0):6d}")


if __name__ == "__main__":
    main()
