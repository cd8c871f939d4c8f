"""Python API for scripts and notebooks: build or load a model, predict x, sample images.

    from jit_core import api
    run = api.load_run("runs/tiny")                    # EMA1 weights, config, plugins
    x_hat = run.model(z, t, y)                         # x-prediction
    images = api.generate(run, torch.arange(10), cfg=2.0, seed=0)   # uint8 (N, C, H, W)
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from . import checkpoint as ckpt
from .config import Config, validate_plugin_options
from .diffusion import sample, to_uint8
from .model import JiT, get_model_config
from .plugins import Plugins, check_run_plugins
from .streams import PIXEL


@dataclass
class LoadedRun:
    run_dir: Path
    config: Config
    model: JiT
    plugins: Plugins
    step: int
    checkpoint: Path
    ema: str


def load_config(run_dir: str | Path, trust_plugins=()) -> Config:
    """A run folder's saved config. Plugins it names that are not installed entry points (module paths,
    ``.py`` files) must be in ``trust_plugins`` (or ``trust_plugins=True``): see
    :func:`jit_core.plugins.check_run_plugins`."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json); pass the folder given to jit train")
    cfg = Config.from_dict(json.loads(path.read_text()))
    check_run_plugins(cfg.plugins, trust_plugins, path)
    return cfg


def build_model_for(config: Config, plugins: Optional[Plugins] = None, device="cpu") -> tuple[JiT, Plugins]:
    """The (randomly initialised) network a config describes, with its plugins' streams."""
    plugins = plugins or Plugins(config.plugins)
    validate_plugin_options(config, plugins.option_schemas())
    mc = get_model_config(config.model, **config.model_overrides)
    return JiT(mc, plugins.streams(config, mc), config.train.attention).to(device), plugins


def load_run(run_dir: str | Path, ema: str = "ema1", device="cpu", checkpoint: str | Path | None = None,
             trust_plugins=()) -> LoadedRun:
    """Load a run folder's model with the chosen weights (``model``, ``ema1`` or ``ema2``), in eval mode.

    ``trust_plugins``: module-path plugins the run's config names that may be imported (see :func:`load_config`).
    """
    if ema not in ("model", "ema1", "ema2"):
        raise ValueError(f"unknown weights {ema!r}: use model, ema1 or ema2")
    run_dir = Path(run_dir)
    config = load_config(run_dir, trust_plugins)
    config.run_dir = str(run_dir)  # the folder may have moved since training
    model, plugins = build_model_for(config, device=device)
    path = Path(checkpoint) if checkpoint else ckpt.latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet")
    weights, state = ckpt.load_checkpoint(path)
    ckpt.check_compatible(weights[ema], model, str(path))
    model.load_state_dict(weights[ema])
    model.eval()
    return LoadedRun(run_dir, config, model, plugins, int(state.get("step", 0)), path, ema)


def initial_noise(model: JiT, indices: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Per-sample initial noise from a generator seeded by (seed, global index): independent of batching and rank."""
    mc, out = model.cfg, {s.name: [] for s in model.streams}
    for i in indices.tolist():
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        for s in model.streams:
            shape = (s.channels, mc.image_size, mc.image_size) if s.kind == "patch" else (mc.grid ** 2, s.channels)
            out[s.name].append(torch.randn(shape, generator=g) * s.noise_scale)
    return {k: torch.stack(v) for k, v in out.items()}


def autocast_for(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def generate_images(model: JiT, labels: torch.Tensor, config: Config, plugins: Plugins, *, cfg=None, steps=None,
                    method=None, interval=None, seed: int = 0, batch_size: Optional[int] = None,
                    start_index: int = 0, autocast: Optional[bool] = None, progress: bool = False) -> torch.Tensor:
    """uint8 images for ``labels``; sample ``i`` uses noise seeded by (seed, start_index + i)."""
    s = config.sample
    device = next(model.parameters()).device
    autocast = (device.type == "cuda" and config.train.precision == "bf16") if autocast is None else autocast
    batch_size = batch_size or s.batch_size
    chunks = range(0, len(labels), batch_size)
    if progress:
        from tqdm import tqdm
        chunks = tqdm(chunks, desc="sampling", unit="batch")
    out = []
    for lo in chunks:
        lab = labels[lo:lo + batch_size].to(device)
        noise = initial_noise(model, torch.arange(start_index + lo, start_index + lo + len(lab)), seed)
        with autocast_for(device, autocast):
            x = sample(model, lab, hook=plugins.hook, config=config, steps=steps or s.steps, method=method or s.method,
                       cfg=s.cfg if cfg is None else cfg, interval=tuple(interval or s.interval), noise=noise)
        out.append(to_uint8(x).cpu())
    return torch.cat(out)


def generate(run: LoadedRun, labels: torch.Tensor, **kwargs) -> torch.Tensor:
    """Sample a loaded run (its sampler settings unless overridden): uint8 ``(N, C, H, W)``."""
    return generate_images(run.model, labels, run.config, run.plugins, **kwargs)


@torch.no_grad()
def sample_with_weights(model: JiT, weights: dict[str, torch.Tensor], labels: torch.Tensor, config: Config,
                        plugins: Plugins, seed: int = 0, autocast: bool = False) -> torch.Tensor:
    """Sample with other weights (an EMA) swapped in temporarily; the model is restored afterwards."""
    current = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.load_state_dict(weights, strict=False)
    model.eval()
    try:
        return generate_images(model, labels, config, plugins, seed=seed, autocast=autocast)
    finally:
        model.load_state_dict(current)
        model.train(was_training)


__all__ = ["LoadedRun", "load_run", "load_config", "build_model_for", "generate", "generate_images",
           "sample_with_weights", "initial_noise", "PIXEL"]
