"""Python API for scripts and notebooks: build or load a model, predict x, sample images.

    from jit_core import api
    run = api.load_run("runs/tiny")                    # EMA1 weights, config, plugins
    x_hat = run.model(z, t, y).pixel                   # x-prediction (JiTOutput: .x_hat per stream)
    images = api.generate(run, torch.arange(10), cfg=2.0, seed=0)   # uint8 (N, C, H, W)

A facade: loading lives in :mod:`jit_core.runs.loading`, generation in :mod:`jit_core.diffusion.generate`.
"""
from jit_core.diffusion.generate import autocast_for, generate_images, initial_noise, sample_with_weights
from jit_core.model import PIXEL
from jit_core.runs.loading import LoadedRun, build_model_for, generate, load_config, load_run

__all__ = ["LoadedRun", "load_run", "load_config", "build_model_for", "generate", "generate_images",
           "sample_with_weights", "initial_noise", "autocast_for", "PIXEL"]
