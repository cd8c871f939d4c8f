"""Calibration of REG's global token: standardisation from training-set statistics.

The co-denoised target of the ``reg`` stream is

    g' = rms_pixels * (g - mean) / sqrt(var + 1e-5)

per channel of the encoder's global token g, with ``mean`` and ``var`` over a fixed subset of the
training images and ``rms_pixels`` the RMS of those images' pixels. Every channel then has zero mean
and the pixel stream's signal RMS, so at the same flow time t both streams have the same SNR (the
argument of V-Co's RMS calibration, arXiv 2603.16792, Sec. 3.4). The mean is subtracted, unlike
V-Co's per-token standardisation: a pooled (or CLS) embedding is far from zero-mean (an L2-normalised
vector of mostly positive activations), and without centring most of the target would be a constant.

The statistics are computed once at the start of training, saved in the run folder
(``reg_stats.safetensors``) and read back on resume, so a resumed run standardises with exactly the
numbers it started with.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jit_core import durable
from jit_core.config import ConfigError

EPS = 1e-5
STATS_FILE = "reg_stats.safetensors"


class RegStatsError(ConfigError):
    """A statistics file that cannot be used for this run; the message names the file and the fix."""


@dataclass
class TokenStats:
    """Per-channel mean and variance of the global token over training images, and the pixels' RMS."""

    mean: torch.Tensor          # (C,)
    var: torch.Tensor           # (C,)
    rms_pixels: float
    meta: dict = field(default_factory=dict)   # encoder, weights, channels, num_images, dataset

    def apply(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, 1, C)`` global tokens -> their calibrated form (see the module docstring)."""
        mean = self.mean.to(tokens.device, torch.float32)
        scale = torch.rsqrt(self.var.to(tokens.device, torch.float32) + EPS) * self.rms_pixels
        return (tokens.float() - mean) * scale


def compute_stats(global_token, batches: Iterable[torch.Tensor]) -> TokenStats:
    """One pass over float image batches in [-1, 1]: sums in float64 of g, g^2 and the squared pixels.

    ``global_token(images) -> (B, C)``. var = E[g^2] - E[g]^2 (clamped at 0).
    """
    s1 = s2 = None
    n, px_sq, px_n = 0, 0.0, 0
    for images in batches:
        g = global_token(images).double()
        if s1 is None:
            s1, s2 = g.new_zeros(g.shape[1:]), g.new_zeros(g.shape[1:])
        s1 += g.sum(0)
        s2 += g.square().sum(0)
        px_sq += images.double().square().sum().item()
        px_n += images.numel()
        n += len(images)
    if n == 0:
        raise ValueError("reg: no training images to compute the global token's statistics from")
    mean = s1 / n
    var = (s2 / n - mean.square()).clamp_min(0.0)
    return TokenStats(mean=mean.float().cpu(), var=var.float().cpu(), rms_pixels=math.sqrt(px_sq / px_n),
                      meta={"num_images": n})


def save_stats(stats: TokenStats, path: Path) -> None:
    """Write ``path`` atomically (safetensors: mean, var; the pixels' RMS and provenance as metadata)."""
    durable.save_safetensors(path, {"mean": stats.mean.contiguous(), "var": stats.var.contiguous()},
                             metadata={"rms_pixels": repr(float(stats.rms_pixels)), "meta": json.dumps(stats.meta)})


def load_stats(path: Path, encoder: str, channels: int) -> TokenStats:
    """Read a file written by :func:`save_stats`, refused in one line unless it is for ``encoder`` with ``channels``."""
    from safetensors import safe_open
    fix = f"delete {path} (it is recomputed) or point reg.stats to statistics of this encoder"
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            mean, var = f.get_tensor("mean"), f.get_tensor("var")
        rms_pixels, meta = float(md["rms_pixels"]), json.loads(md.get("meta", "{}"))
    except Exception as e:   # noqa: BLE001 - any unreadable file is one message
        raise RegStatsError(f"reg statistics {path} are unreadable ({type(e).__name__}): {fix}") from None
    if meta.get("encoder") != encoder or tuple(mean.shape) != (channels,) or tuple(var.shape) != (channels,):
        raise RegStatsError(f"reg statistics {path} are for encoder {meta.get('encoder')!r} with "
                            f"{tuple(mean.shape)} channels, this run uses {encoder!r} with ({channels},): {fix}")
    if not (math.isfinite(rms_pixels) and rms_pixels > 0 and torch.isfinite(mean).all() and (var >= 0).all()):
        raise RegStatsError(f"reg statistics {path} hold non-finite or negative values: {fix}")
    return TokenStats(mean=mean, var=var, rms_pixels=rms_pixels, meta=meta)
