"""A second co-denoising plugin for the composition tests: an ``edges`` token stream (image gradients pooled
on the token grid) with its own null branch (pixel -> edges blocked, edges loss off for dropped samples),
one option-scaled loss term, range-checked options and an optional batch sampler. Loaded by module path:
``--plugin tests.edgeco_plugin`` (its options then live under ``tests.edgeco_plugin.*``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jit_core import Stream, hookimpl
from jit_core.config import option, plugin_options
from jit_core.diffusion import NullBranch
from jit_core.model.streams import PIXEL

EDGES = "edges"


@dataclass
class EdgeOptions:
    weight: float = option(0.1, ge=0)        # weight of the edges stream's v-loss
    smooth: float = option(0.5, ge=0)        # coefficient of the edge_fit term
    mask: bool = True                        # block pixel -> edges and mask the edges loss for dropped samples
    sampler: bool = False                    # return a batch sampler (to test a conflict with V-Co's)


def edge_tokens(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, grid**2, 2): mean |dx| and |dy| of the images over each token's patch."""
    x = images.float().mean(1, keepdim=True)
    dx = F.pad((x[..., :, 1:] - x[..., :, :-1]).abs(), (0, 1))
    dy = F.pad((x[..., 1:, :] - x[..., :-1, :]).abs(), (0, 0, 0, 1))
    pooled = F.adaptive_avg_pool2d(torch.cat([dx, dy], 1), grid)       # (B, 2, grid, grid)
    return pooled.flatten(2).transpose(1, 2) * 4 - 1


@hookimpl
def jit_options():
    return EdgeOptions


@hookimpl
def jit_streams(config, model_config):
    opts = plugin_options(config, EdgeOptions)
    return [Stream(EDGES, kind="tokens", channels=2, loss_weight=opts.weight,
                   target=lambda images: edge_tokens(images, model_config.grid))]


@hookimpl
def jit_batch_sampler(dataset, config, rank, world_size, seed):
    if not plugin_options(config, EdgeOptions).sampler:
        return None
    from jit_core.training.batches import DefaultBatchSampler
    return DefaultBatchSampler(len(dataset), config.optim.batch_size, rank, world_size, seed)


@hookimpl
def jit_null_branch(drop, streams, config):
    if not plugin_options(config, EdgeOptions).mask:
        return None
    return NullBranch(blocked=[(PIXEL, EDGES)], loss_masks={EDGES: (~drop).float()})


@hookimpl
def jit_loss_terms(step):
    """``edge_fit``: smooth x the mean |gradient error| of the pixel x-prediction (non-zero even for a fresh model)."""
    err = step.preds[PIXEL].float() - step.images.float()
    tv = (err[..., 1:, :] - err[..., :-1, :]).abs().mean() + (err[..., :, 1:] - err[..., :, :-1]).abs().mean()
    return {"edge_fit": plugin_options(step.config, EdgeOptions).smooth * tv}
