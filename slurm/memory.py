"""Memory per task for sbatch's ``--mem``: an estimate from the run's model size and data, the default request
when neither the command line nor the profile sets ``--mem-per-task``, and a warning when a request is below it.

Without ``--mem`` a job gets the cluster's default (often ``DefMemPerCPU``: 512 MB on the test cluster against
the ~1 GB even the smallest run uses), and on a cluster that enforces memory it is killed (OUT_OF_MEMORY).

The estimate per task (rank), in GB; rough by design, it errs high:

=========================================  ==========================================================
interpreter, torch, data libraries         1.0 (CPU task); 4.0 (GPU task: CUDA context, libraries, pinned buffers)
model states                               parameters x 4 B x 6 (weights, gradients, 2 Adam moments, 2 EMAs);
                                           a GPU task holds them in host memory while writing a checkpoint
activations (CPU task)                     batch x tokens x hidden size x depth x streams x 64 B
data                                       0.5 per loader worker (``data.num_workers``); Fashion-MNIST 0.1
V-Co                                       0.5 (timm and the encoder) + encoder parameters x 4 B
=========================================  ==========================================================

Measured (maximum RSS, one CPU task): preset ``test`` 0.96 GB (estimate 1.0), ``tiny`` 1.19 GB (1.2),
``vco-tiny`` 1.59 GB (1.8). The default request is the estimate x 1.25, rounded up to a whole GB, and at least
2 GB (CPU task) or 8 GB (GPU task).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from .options import ClusterOptions
from .runs import RunSpec

VCO_NAMES = ("vco", "vco_plugin.plugin")   # rebuilt on a meta-device model by the accum branch (no V-Co names)

GB = 1024 ** 3
ENCODER_PARAMS = {"dinov2": 86_600_000, "efficientnet_lite0": 4_700_000}
FLOOR_GB = {"cpu": 2.0, "gpu": 8.0}
MARGIN = 1.25
MEMORY_FLAGS = ("mem", "mem-per-cpu", "mem-per-gpu")


def _param_count(mc, streams: int) -> int:
    """Trainable parameters of a JiT with ``streams`` token streams (each stream has its own block weights)."""
    per_block = 18 * mc.hidden_size ** 2   # qkv + projection 4 h^2, SwiGLU 3 h (8h/3), adaLN 6 h^2
    embed = mc.patch_size ** 2 * mc.in_channels * mc.bottleneck_dim + mc.bottleneck_dim * mc.hidden_size
    return streams * (mc.depth * per_block + embed) + (mc.num_classes + mc.in_context_len + 4) * mc.hidden_size


def estimate_task_gb(config: dict, gpu: bool) -> float:
    """Estimated peak host memory of one task (rank) of the run ``config`` (``Config.to_dict()``), in GB."""
    from jit_core.model import get_model_config
    try:
        mc = get_model_config(config["model"], **(config.get("model_overrides") or {}))
    except (KeyError, TypeError, ValueError):
        return FLOOR_GB["gpu" if gpu else "cpu"]   # the trainer will name the bad model config
    vco = any(name in config.get("plugins", []) for name in VCO_NAMES)
    streams = 2 if vco else 1
    gb = 4.0 if gpu else 1.0
    gb += _param_count(mc, streams) * 4 * 6 / GB
    data = config.get("data", {})
    if not gpu:
        tokens = mc.grid ** 2 + mc.in_context_len
        batch = config.get("optim", {}).get("batch_size", 1)
        gb += batch * tokens * mc.hidden_size * mc.depth * streams * 64 / GB
    gb += 0.5 * int(data.get("num_workers") or 0) + (0.1 if data.get("name") == "fashion_mnist" else 0.0)
    if vco:
        encoder = config.get("plugin_options", {}).get("vco", {}).get("encoder", "dinov2")
        gb += 0.5 + ENCODER_PARAMS.get(encoder, 0) * 4 / GB
    return gb


def plan_memory(runs: Sequence[RunSpec], opts: ClusterOptions) -> tuple[ClusterOptions, list[str]]:
    """``opts`` with ``mem_per_task`` set (the default from the estimate when unset), and the warnings to show."""
    if opts.mem_per_task is None and any(k.replace("_", "-") in MEMORY_FLAGS for k in opts.sbatch):
        return opts, []   # memory asked for through --sbatch mem-per-cpu=... (sbatch refuses two ways at once)
    gpu = opts.gpus_per_node > 0
    estimate = max(estimate_task_gb(run.config, gpu) for run in runs)
    if opts.mem_per_task is None:
        default = max(FLOOR_GB["gpu" if gpu else "cpu"], math.ceil(estimate * MARGIN))
        return dataclasses.replace(opts, mem_per_task=float(default)), []
    if opts.mem_per_task < estimate:
        return opts, [f"--mem-per-task {opts.mem_per_task:g} GB is below the estimated {estimate:.1f} GB a task of this "
                      "run uses (model states, activations, data workers; see slurm/memory.py): the job may be "
                      f"killed for memory (OUT_OF_MEMORY); request at least {math.ceil(estimate * MARGIN)} GB, "
                      "or leave --mem-per-task out for that default"]
    return opts, []
