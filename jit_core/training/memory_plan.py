"""Does a run fit its GPU? The peak memory per GPU from :mod:`jit_core.model.budget`, checked at start-up.

``jit train --dry-run`` prints the estimate; a start (dry or real) whose estimate exceeds the GPU it trains on
(``train.gpu_memory_gib``, else the visible GPU's memory) is refused with the setting that fits in one line:
activation checkpointing first (the same numbers, one more forward per step), then gradient accumulation over smaller
micro-batches (the same global batch and lr; see :mod:`jit_core.training.accumulate`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from jit_core.config import Config, ConfigError
from jit_core.model import budget
from jit_core.model.budget import Frozen, MemoryEstimate
from jit_core.training.devices import GPU_SIZED_PARAMS


@dataclass(frozen=True)
class MemoryPlan:
    estimate: MemoryEstimate
    capacity_gib: float
    frozen_counted: bool         # False: a plugin's frozen modules could not be counted (see budget.frozen_modules)

    @property
    def fits(self) -> bool:
        return self.estimate.fits(self.capacity_gib)

    def describe(self, config: Config) -> str:
        e, t = self.estimate, config.train
        how = f"micro-batch {e.batch} x {t.grad_accum}" if t.grad_accum > 1 else f"batch {e.batch}"
        ckpt = "on" if e.checkpointing else "off"
        note = "" if self.frozen_counted else "; a plugin's frozen modules not counted"
        return (f"estimated peak memory per GPU: {e.peak_gib:.1f} GiB of {self.capacity_gib:.1f} GiB ({how}, activation "
                f"checkpointing {ckpt}: resident {(e.resident + e.frozen) / budget.GIB:.1f} GiB, activations "
                f"{e.activations / budget.GIB:.1f} GiB{note})")


def run_estimate(config: Config, model_config, streams, frozen: Optional[Frozen]) -> MemoryEstimate:
    """The estimate of ``config``'s training step at its micro-batch (``optim.batch_size``)."""
    return budget.training_memory(model_config, streams, batch=config.optim.batch_size,
                                  checkpointing=config.train.grad_checkpointing,
                                  label_drop_prob=config.diffusion.label_drop_prob, frozen=frozen or Frozen())


def fitting_setting(config: Config, model_config, streams, frozen: Optional[Frozen],
                    capacity_gib: float) -> Optional[str]:
    """The overrides (``KEY=VALUE ...``) that make the run fit ``capacity_gib``, keeping its global batch; None
    if even one image per micro-batch with checkpointing does not fit."""
    t, b = config.train, config.optim.batch_size
    candidates = [(b, t.grad_accum, t.grad_checkpointing)]
    if not t.grad_checkpointing:
        candidates.append((b, t.grad_accum, True))
    for micro in sorted((m for m in range(1, b) if b % m == 0), reverse=True):
        candidates.append((micro, t.grad_accum * (b // micro), True))
    for micro, accum, ckpt in candidates:
        trial = replace(config, optim=replace(config.optim, batch_size=micro),
                        train=replace(config.train, grad_accum=accum, grad_checkpointing=ckpt))
        if run_estimate(trial, model_config, streams, frozen).fits(capacity_gib):
            keys = []
            if ckpt != t.grad_checkpointing:
                keys.append("train.grad_checkpointing=true")
            if micro != b:
                keys += [f"optim.batch_size={micro}", f"train.grad_accum={accum}"]
            return " ".join(keys) or None
    return None


def gpu_capacity_gib(config: Config, device: torch.device) -> Optional[float]:
    """The GPU memory the run must fit: ``train.gpu_memory_gib``, else the visible GPU's; None on the CPU."""
    if config.train.gpu_memory_gib is not None:
        return config.train.gpu_memory_gib
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / budget.GIB
    return None


def check_memory(config: Config, model_config, plugins, device: torch.device) -> Optional[MemoryPlan]:
    """The memory plan of a GPU run (or of a GPU-sized model, against an 80 GB card); ConfigError naming the
    setting that fits when it cannot fit; None for a small CPU run (host memory is not planned here)."""
    capacity = gpu_capacity_gib(config, device)
    if capacity is None:
        if budget.params(model_config).trainable < GPU_SIZED_PARAMS:
            return None
        capacity = budget.GPU_GIB
    streams = plugins.streams(config, model_config)
    frozen = budget.frozen_modules(streams, (model_config.in_channels, model_config.image_size,
                                             model_config.image_size))
    plan = MemoryPlan(run_estimate(config, model_config, streams, frozen), capacity, frozen is not None)
    if not plan.fits and (device.type == "cuda" or config.train.gpu_memory_gib is not None):
        fix = fitting_setting(config, model_config, streams, frozen, capacity)
        advice = f"set {fix}" if fix else "use a GPU with more memory or a smaller model"
        raise ConfigError(f"{plan.describe(config)}: it does not fit; {advice}")
    return plan
