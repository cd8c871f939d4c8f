"""What a run trains: the objective (model + plugin modules as one module, so
that DDP averages every gradient), the batches and the optimizer. The network itself is built by
:func:`jit_core.runs.network.build_network`, the one place a run's network is built."""
from __future__ import annotations

import torch
import torch.nn as nn

from jit_core.config import Config
from jit_core.diffusion import training_losses
from jit_core.distributed import data_rank_and_world
from jit_core.model import JiT
from jit_core.plugins import Plugins
from jit_core.training.accumulate import VirtualRankSampler
from jit_core.training.batches import DefaultBatchSampler, ResumableBatches
from jit_core.training.optim import param_groups


class Objective(nn.Module):
    """The training objective of one batch: ``(total loss, named terms)`` (:func:`jit_core.diffusion.training_losses`).

    A module holding the network and the plugins' trainable modules (``aux``) so that DDP wraps both as one:
    every parameter that receives a gradient is in the one all-reduce, and one forward computes the loss."""

    def __init__(self, model: JiT, aux: nn.ModuleDict, config: Config, hook, capture, rank: int = 0):
        super().__init__()
        self.model, self.aux = model, aux
        self._config, self._hook, self._capture, self._rank = config, hook, capture, rank

    def forward(self, images, labels, global_step: int = 0):
        """``global_step`` (optimizer steps done) and the batch's data-parallel rank seed the plugins' generators
        of this step: under ``train.grad_accum`` each micro-batch draws as the virtual rank it plays."""
        rank, _ = data_rank_and_world()
        return training_losses(self.model, self.model.streams, images, labels, self._config, self._hook,
                               aux=self.aux, capture=self._capture, global_step=global_step, rank=rank)


def make_objective(model, aux, config, plugins: Plugins, capture, dist) -> nn.Module:
    obj: nn.Module = Objective(model, aux, config, plugins.hook, capture, dist.rank)
    if dist.enabled:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        # gradients live in the all-reduce buckets (no second 4 B/parameter copy)
        # the network's buffers are constant RoPE tables: broadcast only when asked or when a plugin module has
        # buffers of its own (running statistics would drift apart)
        broadcast = config.train.ddp_broadcast_buffers or any(True for _ in aux.buffers())
        obj = nn.parallel.DistributedDataParallel(obj, device_ids=ids, gradient_as_bucket_view=True,
                                                  broadcast_buffers=broadcast)
    return obj


def make_batches(dataset, config: Config, plugins: Plugins, dist) -> ResumableBatches:
    """A plugin's batch sampler (``jit_batch_sampler``) or the core's shuffled one, replayable from any step;
    under ``train.grad_accum`` one per virtual rank, as one (:mod:`jit_core.training.accumulate`)."""
    accum = config.train.grad_accum
    world = dist.world_size * accum
    samplers = []
    for rank in range(dist.rank * accum, (dist.rank + 1) * accum):
        sampler = plugins.batch_sampler(dataset, config, rank, world, config.train.seed)
        samplers.append(sampler or DefaultBatchSampler(len(dataset), config.optim.batch_size, rank, world,
                                                       config.train.seed))
    sampler = samplers[0] if accum == 1 else VirtualRankSampler(samplers)
    return ResumableBatches(sampler, dataset, config.data, dist.device)


def make_optimizer(modules, config: Config, base_lr: float, device) -> torch.optim.Optimizer:
    o = config.optim
    fused = o.fused and device.type in ("cuda", "cpu")   # torch's fused AdamW runs on both
    return torch.optim.AdamW(param_groups(modules, o.weight_decay), lr=base_lr, betas=(o.betas[0], o.betas[1]),
                             fused=fused or None)
