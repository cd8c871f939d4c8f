"""JiT's optimiser: AdamW parameter groups and the learning-rate schedule (linear warmup, then constant or cosine)."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch.nn as nn

from jit_core.config import Config, ConfigError


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """JiT's AdamW groups: no decay on 1-D tensors and biases; frozen tensors excluded."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def peak_lr(config: Config, global_batch: int) -> float:
    """``optim.lr``, else JiT's linear scaling rule ``optim.blr`` x global batch / 256 (the batch over every rank)."""
    o = config.optim
    return o.lr if o.lr is not None else o.blr * global_batch / 256


def lr_at(config: Config, epoch_float: float, base_lr: float) -> float:
    """Linear warmup from 0 over ``warmup_epochs``, then constant (or half-cosine to min_lr)."""
    o = config.optim
    if epoch_float < o.warmup_epochs:
        return base_lr * epoch_float / o.warmup_epochs
    if o.schedule == "cosine":
        total = config.train.epochs
        frac = min(1.0, (epoch_float - o.warmup_epochs) / max(total - o.warmup_epochs, 1e-8))
        return o.min_lr + (base_lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
    if o.schedule != "constant":
        raise ConfigError(f"unknown optim.schedule {o.schedule!r}: use constant or cosine")
    return base_lr
