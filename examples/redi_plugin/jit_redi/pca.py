"""ReDi's PCA of the encoder's patch-feature tokens (arXiv 2504.16064, Sec. 3: the feature tokens are reduced
to r principal components before they are co-denoised with the image), fitted once and cached.

:func:`fit` accumulates, in float64, the mean and covariance of every token (position and image alike) of the
training images, and keeps the top-r eigenvectors of the covariance (each signed so that its largest entry is
positive: the basis does not depend on the eigen-solver's sign). :meth:`PcaBasis.project` gives the r
coefficients whitened to unit variance and scaled to the pixels' RMS (``rms_pixels``), so both parts of the
fused token have the same SNR at the same t (the calibration argument of V-Co, arXiv 2603.16792).

The cache (:func:`save` / :func:`load`) records what the basis was fitted for: the encoder and its weights, the
token grid and image size, the data (name, path, number of training images) and r. :func:`load` refuses a file
fitted for anything else in one line naming the difference and the fix.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jit_core import durable
from jit_core.config import ConfigError

IDENTITY_KEYS = ("encoder", "weights", "grid", "image_size", "data", "components")


class PcaCacheError(ConfigError):
    """A PCA cache that cannot be used for this run (one line: the file, what differs, the fix)."""


@dataclass
class PcaBasis:
    """Mean ``(C,)``, top-r components ``(r, C)`` (rows, orthonormal), their variances ``(r,)``, the pixels' RMS."""

    mean: torch.Tensor
    components: torch.Tensor
    variances: torch.Tensor
    rms_pixels: float
    meta: dict = field(default_factory=dict)     # what it was fitted for (IDENTITY_KEYS) and on how many tokens

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, T, C)`` encoder tokens -> ``(B, T, r)`` coefficients, each of unit variance times ``rms_pixels``."""
        mean = self.mean.to(tokens.device, torch.float32)
        comps = self.components.to(tokens.device, torch.float32)
        scale = torch.rsqrt(self.variances.to(tokens.device, torch.float32).clamp_min(1e-12)) * self.rms_pixels
        return ((tokens.float() - mean) @ comps.T) * scale


def fit(tokens_of: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[torch.Tensor], r: int) -> PcaBasis:
    """The top-``r`` principal components of every token ``tokens_of(images)`` ``(B, T, C)`` of the image batches
    (float, [-1, 1]), and the images' pixel RMS."""
    s1 = s2 = None
    n_tok = n_img = 0
    px_sq, px_n = 0.0, 0
    for images in batches:
        z = tokens_of(images).double().flatten(0, 1)           # (B*T, C)
        if s1 is None:
            s1, s2 = z.new_zeros(z.shape[1]), z.new_zeros(z.shape[1], z.shape[1])
        s1 += z.sum(0)
        s2 += z.T @ z
        n_tok += len(z)
        n_img += len(images)
        px_sq += images.double().square().sum().item()
        px_n += images.numel()
    if s1 is None:
        raise ValueError("redi: no training images to fit the PCA on")
    if r > len(s1):
        raise ValueError(f"redi.components={r} but the encoder's tokens have {len(s1)} channels")
    mean = s1 / n_tok
    cov = s2 / n_tok - torch.outer(mean, mean)
    values, vectors = torch.linalg.eigh(cov)                   # ascending
    values, vectors = values.flip(0)[:r], vectors.flip(1)[:, :r].T   # (r,), (r, C)
    sign = torch.sign(vectors.gather(1, vectors.abs().argmax(1, keepdim=True)))
    return PcaBasis(mean=mean.float(), components=(vectors * sign).float().contiguous(),
                    variances=values.clamp_min(0).float(), rms_pixels=math.sqrt(px_sq / px_n),
                    meta={"num_images": n_img, "num_tokens": n_tok,
                          "explained": float(values.sum() / torch.linalg.eigvalsh(cov).clamp_min(0).sum())})


def save(basis: PcaBasis, path: Path) -> None:
    """Write the cache atomically (safetensors; ``rms_pixels`` and ``meta`` as metadata)."""
    durable.ensure_dir(path.parent)
    durable.save_safetensors(path, {"mean": basis.mean, "components": basis.components, "variances": basis.variances},
                             metadata={"rms_pixels": repr(float(basis.rms_pixels)), "meta": json.dumps(basis.meta)})


def load(path: Path, identity: Mapping) -> PcaBasis:
    """The cached basis at ``path``, refused (:class:`PcaCacheError`, one line) unless fitted for ``identity``."""
    from safetensors import safe_open
    fix = f"delete {path} to refit it, or point redi.pca to another file"
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in ("mean", "components", "variances")}
        rms_pixels, meta = float(md["rms_pixels"]), json.loads(md["meta"])
    except Exception as e:   # noqa: BLE001 - any unreadable file is one message
        raise PcaCacheError(f"redi PCA cache {path} is unreadable ({type(e).__name__}): {fix}") from None
    for key in IDENTITY_KEYS:
        if meta.get(key) != identity[key]:
            raise PcaCacheError(f"redi PCA cache {path} was fitted for {key}={meta.get(key)!r}, this run has "
                                f"{key}={identity[key]!r}: {fix}")
    r, c = tensors["components"].shape if tensors["components"].ndim == 2 else (-1, -1)
    if r != identity["components"] or tensors["mean"].shape != (c,) or tensors["variances"].shape != (r,) \
            or not all(torch.isfinite(t).all() for t in tensors.values()) or not rms_pixels > 0:
        raise PcaCacheError(f"redi PCA cache {path} holds tensors of the wrong shape or non-finite values: {fix}")
    return PcaBasis(rms_pixels=rms_pixels, meta=meta, **tensors)
