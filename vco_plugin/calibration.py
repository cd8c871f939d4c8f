"""RMS calibration of the feature stream (V-Co, arXiv 2603.16792, ingredient 4; the official
statistics and factor: docs/official-code.md#feature-target).

The co-denoised target is ``f = alpha * z / sqrt(var + 1e-5)``:

- ``var`` (T, C): the plain variance over images of every (position, channel) of the encoder's
  target tokens ``z`` (no mean is subtracted in the standardisation);
- ``alpha = RMS(pixels) / RMS(z / sqrt(var + 1e-5))``: one global factor giving both streams the
  same signal RMS, hence the same SNR at the same t.

The equivalent alternative (alpha = 1 with a shifted feature-stream time) is :func:`time_shift`.
``vco.calibration`` picks one of four forms (paper Table 4, as the released scripts run them):

- ``rms``: ``f = alpha * z / sqrt(var + 1e-5)`` (the recipe);
- ``none``: ``f = z / sqrt(var + 1e-5)``, i.e. ``rms`` with alpha = 1: the released ``table4_run_a``
  still standardises, it only drops alpha;
- ``time_shift``: the released ``table4_run_b``: the target keeps the alpha scaling *and* the stream is
  noised at ``t_d = time_shift(t, alpha)``; its target velocity divides by ``1 - t_d`` but its predicted
  velocity by ``1 - t`` (in training and sampling), so the feature head learns a rescaled quantity;
- ``time_shift_corrected``: the ablation run_b meant, without that defect: alpha = 1 on the target and
  ``t_d`` everywhere (noising, both velocities, sampler steps).
Statistics are computed with :func:`compute_stats` and stored by :func:`save_stats` as a
safetensors file (``var`` plus metadata) with a human-readable JSON summary beside it;
:func:`calibrate_command` wraps it all as ``jit vco calibrate``.
"""
from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import click
import torch
from torch import Tensor

from jit_core import durable

EPS = 1e-5


class StatsError(RuntimeError):
    """A statistics file is missing or unreadable; the message says how to fix it."""


@dataclass
class FeatureStats:
    """Standardisation statistics of an encoder's target tokens.

    - ``var``: (T, C) per (position, channel) variance over images;
    - ``rms_factor``: alpha = RMS(pixels) / RMS(standardised features);
    - ``meta``: provenance (encoder, weights, dataset, image size, grid, number of images,
      rms_pixels, rms_features = RMS of the standardised features before alpha, date).
    """

    var: Tensor
    rms_factor: float
    meta: dict = field(default_factory=dict)

    def to(self, device) -> FeatureStats:
        """A copy whose ``var`` lives on ``device`` (so :func:`standardize` copies nothing per step)."""
        return replace(self, var=self.var.to(device))


def _batches(images_iter: Iterable) -> Iterable[Tensor]:
    for batch in images_iter:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def compute_stats(encoder, images_iter: Iterable, grid: int, max_images: int | None = None,
                  progress: bool = True) -> FeatureStats:
    """One pass over ``images_iter`` (float batches in [-1, 1], ``(B, C, H, W)``; ``(images, labels)``
    pairs are accepted too), at most ``max_images`` images.

    Accumulates, in float64, per (T, C) the sums of z and z^2 and the sum of squared pixels:
    var = E[z^2] - E[z]^2, rms_pixels = sqrt(mean x^2) over all pixel elements,
    rms_std = sqrt(mean over (T, C) of E[z^2] / (var + 1e-5)), alpha = rms_pixels / rms_std.
    """
    from tqdm.auto import tqdm

    device = getattr(encoder, "device", torch.device("cpu"))
    s1: Tensor | None = None   # per (T, C) sums of z and z^2
    s2: Tensor | None = None
    size: tuple[int, ...] | None = None
    n_img, px_sq, px_n = 0, 0.0, 0
    bar = tqdm(total=max_images, unit="img", desc=f"calibrating {getattr(encoder, 'name', 'encoder')}",
               disable=not progress)
    for x in _batches(images_iter):
        if max_images is not None:
            x = x[: max_images - n_img]
        if len(x) == 0:
            break
        x = x.to(device, torch.float32)
        z = encoder.target_tokens(x, grid).double()
        if s1 is None:
            s1, s2 = z.new_zeros(z.shape[1:]), z.new_zeros(z.shape[1:])
        s1 += z.sum(0)
        s2 += z.square().sum(0)
        px_sq += x.double().square().sum().item()
        px_n += x.numel()
        n_img += len(x)
        size = tuple(x.shape[1:])
        bar.update(len(x))
        if max_images is not None and n_img >= max_images:
            break
    bar.close()
    if n_img == 0 or s1 is None or s2 is None or size is None:   # all four say the same: no batch came
        raise ValueError("compute_stats: no images")
    mean, msq = s1 / n_img, s2 / n_img
    var = (msq - mean.square()).clamp_min(0.0)
    rms_pixels = math.sqrt(px_sq / px_n)
    rms_features = (msq / (var + EPS)).mean().sqrt().item()
    alpha = rms_pixels / rms_features
    meta = {
        "encoder": getattr(encoder, "name", type(encoder).__name__),
        "weights": str(getattr(encoder, "weights", "")),
        "image_shape": list(size),
        "image_size": size[-1],
        "grid": grid,
        "num_images": n_img,
        "rms_pixels": rms_pixels,
        "rms_features": rms_features,
        "rms_raw_features": msq.mean().sqrt().item(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return FeatureStats(var=var.float().cpu(), rms_factor=alpha, meta=meta)


def standardize(tokens: Tensor, stats: FeatureStats) -> Tensor:
    """The calibrated clean target ``tokens / sqrt(var + 1e-5) * rms_factor`` (tokens (B, T, C))."""
    if tokens.shape[-2:] != stats.var.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not match the statistics' (T, C) = "
                         f"{tuple(stats.var.shape)} (other encoder, grid or image size?)")
    scale = torch.rsqrt(stats.var.to(tokens.device, torch.float32) + EPS) * stats.rms_factor
    return tokens * scale


def time_shift(t: Tensor, alpha: float) -> Tensor:
    """t_d = alpha t / (1 + (alpha - 1) t): the feature-stream time with SNR_d(t_d) = alpha^2 SNR(t)."""
    return alpha * t / (1 + (alpha - 1) * t)


def _json_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def save_stats(stats: FeatureStats, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``path`` (safetensors: ``var`` + metadata) and its JSON summary ``path.with_suffix('.json')``.
    Returns both paths."""
    path = Path(path)
    durable.ensure_dir(path.parent)
    durable.save_safetensors(path, {"var": stats.var.detach().float().cpu().contiguous()},
                             metadata={"rms_factor": repr(float(stats.rms_factor)), "meta": json.dumps(stats.meta)})
    v = stats.var.float()
    summary = {
        "rms_factor": float(stats.rms_factor),
        "rms_pixels": stats.meta.get("rms_pixels"),
        "rms_features": stats.meta.get("rms_features"),
        "var": {"shape": list(v.shape), "min": v.min().item(), "max": v.max().item(), "mean": v.mean().item()},
        "meta": stats.meta,
    }
    jpath = _json_path(path)
    durable.write_json(jpath, summary, indent=2)
    return path, jpath


def load_stats(path: str | os.PathLike) -> FeatureStats:
    """Read a file written by :func:`save_stats`."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise StatsError(f"feature statistics not found: {path} (create them with `jit vco calibrate --out {path}`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            var = f.get_tensor("var")
        rms_factor = float(md["rms_factor"])
        meta = json.loads(md.get("meta", "{}"))
    except Exception as e:
        raise StatsError(f"corrupt feature statistics {path}: {type(e).__name__}: {e} "
                         f"(recreate them with `jit vco calibrate --out {path}`)") from e
    if var.ndim != 2 or not math.isfinite(rms_factor) or rms_factor <= 0:
        raise StatsError(f"corrupt feature statistics {path}: var shape {tuple(var.shape)}, rms_factor {rms_factor}")
    return FeatureStats(var=var, rms_factor=rms_factor, meta=meta)


# --------------------------------------------------------------------------------------- CLI
_BUILTIN_DATA = ("fashion_mnist", "digits")


def _data_config(data: str, image_size: int):
    from jit_core.config import DataConfig

    if data in _BUILTIN_DATA:
        return DataConfig(name=data, image_size=image_size, flip=False)
    if not Path(data).expanduser().is_dir():
        raise click.BadParameter(f"{data!r} is neither {' nor '.join(_BUILTIN_DATA)} nor an image folder",
                                 param_hint="--data")
    return DataConfig(name="folder", path=data, image_size=image_size, flip=False)


def calibrate_command() -> click.Command:
    """``calibrate``: compute and save the feature statistics (to be attached under ``jit vco``)."""
    from .features import ENCODER_NAMES

    @click.command("calibrate")
    @click.option("--data", required=True, help="fashion_mnist, digits, or an ImageFolder path (<root>/<class>/<img>)")
    @click.option("--encoder", type=click.Choice(ENCODER_NAMES), default="dinov2", show_default=True)
    @click.option("--encoder-weights", default=None, help="local weights file ('random': tests only)")
    @click.option("--image-size", type=int, default=256, show_default=True)
    @click.option("--grid", type=int, default=16, show_default=True, help="token grid = image_size / patch_size")
    @click.option("--max-images", type=int, default=50_000, show_default=True, help="random subset size (0: all)")
    @click.option("--batch-size", type=int, default=64, show_default=True)
    @click.option("--num-workers", type=int, default=2, show_default=True)
    @click.option("--seed", type=int, default=0, show_default=True, help="seed of the random subset")
    @click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:i]")
    @click.option("--out", type=click.Path(dir_okay=False), default="stats.safetensors", show_default=True)
    def calibrate(data, encoder, encoder_weights, image_size, grid, max_images, batch_size, num_workers, seed,
                  device, out):
        """Compute the per-(position, channel) variance of the encoder's target tokens and the RMS factor
        alpha = RMS(pixels) / RMS(standardised features) (V-Co ingredient 4)."""
        from torch.utils.data import DataLoader

        from jit_core.data import build_dataset, to_model_range

        from .features import build_encoder

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dataset = build_dataset(_data_config(data, image_size), train=True)
        enc = build_encoder(encoder, encoder_weights, device)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                            generator=torch.Generator().manual_seed(seed))
        images = (to_model_range(u8) for u8, _ in loader)
        stats = compute_stats(enc, images, grid, max_images=max_images or None)
        stats.meta.update(dataset=data, seed=seed)
        path, jpath = save_stats(stats, out)
        click.echo(f"RMS factor alpha = {stats.rms_factor:.4f} (rms_pixels {stats.meta['rms_pixels']:.4f}, "
                   f"rms_features {stats.meta['rms_features']:.4f}, {stats.meta['num_images']} images)")
        click.echo(f"wrote {path} and {jpath}")

    return calibrate
