"""Memory per task for sbatch's ``--mem``: an estimate from the run's model size and data, the default request
when neither the command line nor the profile sets ``--mem-per-task``, and a warning when a request is below it.

Without ``--mem`` a job gets the cluster's default (often ``DefMemPerCPU``: 512 MB on the test cluster against
the ~1 GB even the smallest run uses), and on a cluster that enforces memory it is killed (OUT_OF_MEMORY).

The estimate per task (rank), in GB, from the run's size model (:mod:`jit_core.model.budget`: the network with
the streams of the run's plugins, and the frozen modules those streams run, counted without knowing the plugin);
rough by design, it errs high:

=========================================  ==========================================================
interpreter, torch, data libraries         1.0 (CPU task); 4.0 (GPU task: CUDA context, libraries, pinned buffers)
model states                               24 B per trainable parameter (weights, gradients, 2 Adam moments,
                                           2 EMAs), 12 B per frozen one; a GPU task holds them in host memory
                                           while writing a checkpoint
activations (CPU task)                     the budget's activations of one micro-batch
data                                       0.5 per loader worker (``data.num_workers``); Fashion-MNIST 0.1
a plugin's frozen modules                  0.5 (its libraries) + their parameters x 4 B
=========================================  ==========================================================

Measured (maximum RSS, one CPU task): preset ``test`` 0.96 GB, ``tiny`` 1.19 GB, ``vco-tiny`` 1.59 GB. The
default request is the estimate x 1.25, rounded up to a whole GB, and at least 2 GB (CPU task) or 8 GB (GPU task).

For GPU jobs :func:`plan_memory` also checks the peak per GPU (``train.gpu_memory_gib``, else an 80 GB card)
and, when a run does not fit, proposes the setting that does: activation checkpointing, then a micro-batch with
``train.grad_accum`` keeping the global batch (:func:`jit_core.training.memory_plan.fitting_setting`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from jit_core.config import Config
from jit_core.model import budget

from .options import ClusterOptions
from .runs import RunSpec

GB = 1024 ** 3
FLOOR_GB = {"cpu": 2.0, "gpu": 8.0}
MARGIN = 1.25
MEMORY_FLAGS = ("mem", "mem-per-cpu", "mem-per-gpu")
CPU_ACTIVATIONS = 1.0         # the bf16 count matches a CPU task's fp32 peak RSS on test, tiny and vco-tiny (see below)


@dataclass(frozen=True)
class RunSize:
    """What the size model needs of a run: its config, model config, streams and frozen modules."""

    config: Any
    model_config: Any
    streams: list
    frozen: Optional[budget.Frozen]


def run_size(config: Config) -> Optional[RunSize]:
    """The run ``config`` as the trainer would build it, on the meta device; None if its model config is bad
    (the trainer names it)."""
    from jit_core.plugins import resolve_run
    try:
        cfg, plugins = resolve_run(config, read_data=False)
    except (KeyError, TypeError, ValueError):     # ConfigError is a ValueError
        return None
    mc = cfg.model_config
    streams = plugins.streams(cfg, mc)
    frozen = budget.frozen_modules(streams, (mc.in_channels, mc.image_size, mc.image_size))
    return RunSize(cfg, mc, streams, frozen)


def estimate_task_gb(config: Config, gpu: bool) -> float:
    """Estimated peak host memory of one task (rank) of the run ``config``, in GB."""
    size = run_size(config)
    if size is None:
        return FLOOR_GB["gpu" if gpu else "cpu"]
    p = budget.params(size.model_config, size.streams)
    gb = 4.0 if gpu else 1.0
    gb += (24 * p.trainable + 12 * p.frozen) / GB
    if not gpu:
        from jit_core.training.memory_plan import run_estimate
        gb += CPU_ACTIVATIONS * run_estimate(size.config, size.model_config, size.streams, size.frozen).activations / GB
    data = size.config.data
    gb += 0.5 * data.num_workers + (0.1 if data.name == "fashion_mnist" else 0.0)
    if size.frozen and size.frozen.params:
        gb += 0.5 + 4 * size.frozen.params / GB
    return gb


def gpu_advice(runs: Sequence[RunSpec]) -> list[str]:
    """For each run whose estimated peak per GPU exceeds its GPU: the setting that fits, in one line."""
    from jit_core.training.memory_plan import fitting_setting, run_estimate
    out = []
    for run in runs:
        size = run_size(run.config)
        if size is None:
            continue
        capacity = size.config.train.gpu_memory_gib or budget.GPU_GIB
        est = run_estimate(size.config, size.model_config, size.streams, size.frozen)
        if not est.fits(capacity):
            fix = fitting_setting(size.config, size.model_config, size.streams, size.frozen, capacity)
            where = f"{run.label}: " if run.label else ""
            out.append(f"{where}estimated peak per GPU {est.peak_gib:.1f} GiB exceeds {capacity:.1f} GiB: "
                       + (f"add {fix}" if fix else "use a GPU with more memory or a smaller model"))
    return out


def plan_memory(runs: Sequence[RunSpec], opts: ClusterOptions) -> tuple[ClusterOptions, list[str]]:
    """``opts`` with ``mem_per_task`` set (the default from the estimate when unset), and the warnings to show
    (a host request below the estimate; a GPU run that does not fit its GPU, with the setting that does)."""
    gpu = opts.gpus_per_node > 0
    warnings = gpu_advice(runs) if gpu else []
    if opts.mem_per_task is None and any(k.replace("_", "-") in MEMORY_FLAGS for k in opts.sbatch):
        return opts, warnings   # memory asked for through --sbatch mem-per-cpu=... (sbatch refuses two ways at once)
    estimate = max(estimate_task_gb(run.config, gpu) for run in runs)
    if opts.mem_per_task is None:
        default = max(FLOOR_GB["gpu" if gpu else "cpu"], math.ceil(estimate * MARGIN))
        return dataclasses.replace(opts, mem_per_task=float(default)), warnings
    if opts.mem_per_task < estimate:
        warnings.append(f"--mem-per-task {opts.mem_per_task:g} GB is below the estimated {estimate:.1f} GB a task of "
                        "this run uses (model states, activations, data workers; see slurm/memory.py): the job may be "
                        f"killed for memory (OUT_OF_MEMORY); request at least {math.ceil(estimate * MARGIN)} GB, "
                        "or leave --mem-per-task out for that default")
    return opts, warnings
