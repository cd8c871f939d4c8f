"""Images from a network: per-sample noise seeded by (seed, global index), batching, CFG, EMA swaps.

Sample ``i`` of a call uses noise drawn from a generator seeded by ``(seed, start_index + i)``, so the
images do not depend on the batch size or on how the ids are split across ranks.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from jit_core.config import Config
from jit_core.diffusion.flow import sample, to_uint8
from jit_core.model import PIXEL, JiT


def initial_noise(model: JiT, indices: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Per-sample initial noise from a generator seeded by (seed, global index): independent of batching and rank."""
    out = {s.name: [] for s in model.streams}
    for i in indices.tolist():
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        for s in model.streams:
            out[s.name].append(torch.randn(model.input_shape(s), generator=g) * s.noise_scale)
    return {k: torch.stack(v) for k, v in out.items()}


def autocast_for(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def generate_images(model: JiT, labels: torch.Tensor, config: Config, plugins, *, cfg=None, steps=None,
                    method=None, interval=None, seed: int = 0, batch_size: Optional[int] = None,
                    start_index: int = 0, autocast: Optional[bool] = None, progress: bool = False,
                    return_streams: bool = False):
    """uint8 images for ``labels``; sample ``i`` uses noise seeded by (seed, start_index + i).

    ``return_streams``: return ``(images, {stream: final float tensor})`` with every plugin stream's
    sampled tensor (CPU, e.g. ``(N, T, C)`` tokens in the stream's normalized units).
    """
    s = config.sample
    device = next(model.parameters()).device
    autocast = (device.type == "cuda" and config.train.precision == "bf16") if autocast is None else autocast
    batch_size = batch_size or s.batch_size
    chunks = range(0, len(labels), batch_size)
    if progress:
        from jit_core.progress import track
        chunks = track(chunks, desc="sampling", unit="batch")
    out, streams = [], {}
    for lo in chunks:
        lab = labels[lo:lo + batch_size].to(device)
        noise = initial_noise(model, torch.arange(start_index + lo, start_index + lo + len(lab)), seed)
        with autocast_for(device, autocast):
            x = sample(model, lab, hook=plugins.hook, config=config, steps=steps or s.steps, method=method or s.method,
                       cfg=s.cfg if cfg is None else cfg, interval=tuple(interval or s.interval), noise=noise,
                       return_all_streams=return_streams)
        if return_streams:
            for name, value in x.items():
                if name != PIXEL:
                    streams.setdefault(name, []).append(value.float().cpu())
            x = x[PIXEL]
        out.append(to_uint8(x).cpu())
    images = torch.cat(out)
    return (images, {k: torch.cat(v) for k, v in streams.items()}) if return_streams else images


@torch.no_grad()
def sample_with_weights(model: JiT, weights: dict[str, torch.Tensor], labels: torch.Tensor, config: Config,
                        plugins, seed: int = 0, autocast: bool = False) -> torch.Tensor:
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
