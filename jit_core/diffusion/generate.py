"""Images from a network, the one sampling call: per-sample noise seeded by (seed, global index), batching, CFG,
EMA swaps. :class:`SampleSpec` says how; :func:`generate_images` does it.

Sample ``i`` of a call uses noise drawn from a generator seeded by ``(seed, start_index + i)``, so the
images do not depend on the batch size or on how the ids are split across ranks.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch

from jit_core.config import Config
from jit_core.diffusion.flow import sample, to_uint8
from jit_core.model import PIXEL, JiT


def initial_noise(model: JiT, indices: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Per-sample initial noise from a generator seeded by (seed, global index): independent of batching and rank."""
    out: dict[str, list[torch.Tensor]] = {s.name: [] for s in model.streams}
    for i in indices.tolist():
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        for s in model.streams:
            out[s.name].append(torch.randn(model.input_shape(s), generator=g) * s.noise_scale)
    return {k: torch.stack(v) for k, v in out.items()}


def autocast_for(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


@dataclass(frozen=True)
class SampleSpec:
    """How to sample: the sampler's settings and the seed. ``None`` takes the run's own (``config.sample``;
    ``autocast``: bf16 on CUDA when ``train.precision`` is bf16)."""

    cfg: Optional[float] = None                          # guidance scale w (1: unguided)
    steps: Optional[int] = None                          # sampler steps (JiT: Heun 50)
    method: Optional[str] = None                         # heun | euler
    interval: Optional[Sequence[float]] = None           # the CFG interval (lo, hi) in t
    seed: int = 0                                        # sample i's noise: seeded by (seed, start_index + i)
    batch_size: Optional[int] = None                     # images per forward batch
    autocast: Optional[bool] = None


def generate_images(model: JiT, labels: torch.Tensor, config: Config, plugins, spec: SampleSpec = SampleSpec(), *,
                    start_index: int = 0, weights: Optional[dict[str, torch.Tensor]] = None, progress: bool = False,
                    return_streams: bool = False):
    """uint8 images ``(N, C, H, W)`` for ``labels``: the one sampling call (``jit sample``, ``jit evaluate``, the
    trainer's sample grids and :func:`jit_core.api.generate` all come here). Sample ``i`` uses noise seeded by
    ``(spec.seed, start_index + i)``.

    ``weights``: a state dict (an EMA) sampled instead of the model's own, swapped in for the call and out again
    (the model's weights and train/eval mode are restored). ``return_streams``: return ``(images, {stream: final
    float tensor})`` with every plugin stream's sampled tensor (CPU, e.g. ``(N, T, C)`` tokens in the stream's
    normalized units).
    """
    if weights is None:
        return _generate(model, labels, config, plugins, spec, start_index, progress, return_streams)
    with torch.no_grad():
        current = {k: v.detach().clone() for k, v in model.state_dict().items()}
        was_training = model.training
        model.load_state_dict(weights, strict=False)
        model.eval()
        try:
            return _generate(model, labels, config, plugins, spec, start_index, progress, return_streams)
        finally:
            model.load_state_dict(current)
            model.train(was_training)


def _generate(model: JiT, labels: torch.Tensor, config: Config, plugins, spec: SampleSpec, start_index: int,
              progress: bool, return_streams: bool):
    s = config.sample
    device = next(model.parameters()).device
    autocast = (device.type == "cuda" and config.train.precision == "bf16") if spec.autocast is None else spec.autocast
    batch_size = spec.batch_size or s.batch_size
    chunks: Iterable[int] = range(0, len(labels), batch_size)
    if progress:
        from jit_core.progress import track
        chunks = track(chunks, desc="sampling", unit="batch")
    lo_t, hi_t = spec.interval or s.interval
    out: list[torch.Tensor] = []
    streams: dict[str, list[torch.Tensor]] = {}
    for lo in chunks:
        lab = labels[lo:lo + batch_size].to(device)
        noise = initial_noise(model, torch.arange(start_index + lo, start_index + lo + len(lab)), spec.seed)
        with autocast_for(device, autocast):
            x = sample(model, lab, hook=plugins.hook, config=config, steps=spec.steps or s.steps,
                       method=spec.method or s.method, cfg=s.cfg if spec.cfg is None else spec.cfg,
                       interval=(float(lo_t), float(hi_t)), noise=noise, return_all_streams=return_streams)
        if return_streams:
            for name, value in x.items():
                if name != PIXEL:
                    streams.setdefault(name, []).append(value.float().cpu())
            x = x[PIXEL]
        out.append(to_uint8(x).cpu())
    images = torch.cat(out)
    return (images, {k: torch.cat(v) for k, v in streams.items()}) if return_streams else images
