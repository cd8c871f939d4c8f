"""A neutral v2 test plugin, written from docs/plugins.md alone: a ``lowpass`` stream on a coarse grid of its own
(half the model's side: 4x4 tokens beside the 8x8 pixel tokens, ``Stream.grid``), with its own per-sample drop,
its own unconditional form, a loss term that draws from the plugin's generator, and per-run state. Loaded by
module path: ``--plugin tests.core.lowpass_plugin`` (options under ``tests.core.lowpass_plugin.*``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from jit_core import Stream, hookimpl
from jit_core.config import option, plugin_options
from jit_core.diffusion import NullBranch
from jit_core.model.streams import PIXEL

LOWPASS = "lowpass"


@dataclass
class LowpassOptions:
    drop: float = option(0.3, ge=0, le=1)    # the stream's own drop probability
    jitter: float = option(0.01, ge=0)       # coefficient of a term that draws from the plugin's generator
    weights: str = ""                        # a file the run needs: pre-flight reports it missing


@dataclass
class LowpassStream(Stream):
    """Block-mean images on the stream's own coarse grid; when dropped, pixel queries cannot see it and its loss is off."""

    run: object = field(default=None, repr=False, compare=False)

    def clean(self, images, values):
        tokens = F.adaptive_avg_pool2d(images.float().mean(1, keepdim=True), self.grid)   # (B, 1, g, g)
        values["lowpass.mean"] = tokens.mean()                 # travels to the loss term on the step
        return tokens.flatten(2).transpose(1, 2)               # (B, T, 1)

    def null_branch(self, drop, streams, training):
        self.run.drops_seen.append(drop.clone())
        return NullBranch(blocked=[(PIXEL, self.name)], loss_masks={self.name: (~drop).float()})


class LowpassRun:
    def __init__(self, config):
        self.opts = plugin_options(config, LowpassOptions)
        self.drops_seen: list = []
        self.set_up = False

    @hookimpl
    def jit_setup(self, run):
        self.set_up = True
        torch.randn(100)                    # set-up may use the global RNG: the core forks it

    @hookimpl
    def jit_preflight(self):
        if self.opts.weights and not Path(self.opts.weights).is_file():
            return [f"lowpass weights {self.opts.weights} not found"]
        return []

    @hookimpl
    def jit_eval_metrics(self, images):
        return {"lowpass/mean_intensity": images.float().mean().item() / 255}

    @hookimpl
    def jit_streams(self, model_config):
        return [LowpassStream(LOWPASS, channels=1, loss_weight=0.2, drop_prob=self.opts.drop,
                              grid=max(1, model_config.grid // 2), run=self)]

    @hookimpl
    def jit_loss_terms(self, step, generator):
        noise = torch.randn(step.preds[PIXEL].shape, generator=generator).to(step.preds[PIXEL])
        jitter = self.opts.jitter * (step.preds[PIXEL].float() * noise).mean().abs()
        return {"jitter": jitter + 0 * step.values["lowpass.mean"]}


@hookimpl
def jit_options():
    return LowpassOptions


@hookimpl
def jit_run_plugin(config):
    return LowpassRun(config)
