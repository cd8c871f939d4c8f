"""Python API for scripts and notebooks: build or load a model, predict x, sample images, export, push.

    from jit_core import api
    run = api.load_run("runs/tiny")                    # EMA1 weights, config, plugins
    run = api.load_run("hf://OWNER/REPO")              # a run `jit push` uploaded (offline: from the cache)
    x_hat = run.model(z, t, y)                         # x-prediction
    images = api.generate(run, torch.arange(10), cfg=2.0, seed=0)   # uint8 (N, C, H, W)
    api.export_run("runs/tiny", "checkpoint-last.pth")  # the official .pth layout

A facade: loading lives in :mod:`jit_core.runs.loading` (and :mod:`jit_core.runs.hubrun` for ``hf://``),
generation in :mod:`jit_core.diffusion.generate`, export and push in :mod:`jit_core.runs.export` and
:mod:`jit_core.runs.push`.
"""
from __future__ import annotations

from pathlib import Path

from jit_core.diffusion.generate import autocast_for, generate_images, initial_noise, sample_with_weights
from jit_core.model import PIXEL
from jit_core.runs import hub
from jit_core.runs.export import export_run
from jit_core.runs.hubrun import load_hub_run
from jit_core.runs.loading import LoadedRun, build_model_for, generate, load_config
from jit_core.runs.loading import load_run as _load_run_folder
from jit_core.runs.push import push

__all__ = ["LoadedRun", "load_run", "load_config", "build_model_for", "generate", "generate_images",
           "sample_with_weights", "initial_noise", "autocast_for", "PIXEL", "export_run", "push"]


def load_run(run: str | Path, ema: str = "ema1", device="cpu", checkpoint: str | Path | None = None,
             trust_plugins=()) -> LoadedRun:
    """A run folder (its newest verified checkpoint, or ``checkpoint``) or a pushed run ``hf://OWNER/REPO``,
    with the chosen weights (``model``, ``ema1``, ``ema2``), in eval mode."""
    if hub.is_hub_name(run):
        if checkpoint is not None:
            raise ValueError(f"checkpoint= does not apply to {run}: a pushed run holds one checkpoint")
        return load_hub_run(str(run), ema=ema, device=device, trust_plugins=trust_plugins)
    return _load_run_folder(run, ema=ema, device=device, checkpoint=checkpoint, trust_plugins=trust_plugins)
