"""JiT building blocks (arXiv 2511.13720, Sec. 4 and Tab. 4): embedders, RMSNorm, RoPE, SwiGLU, heads, tables.

The official key names (``adaLN_modulation``, ``w12``, ``proj1`` ...) are kept so official checkpoints
load without renaming (docs/architecture.md, "The model").
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (1 + scale) + shift, for x (B, L, h) and (B, h) terms broadcast over the L tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class RMSNorm(nn.Module):
    """Llama-style RMSNorm, computed in fp32 and cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class TimestepEmbedder(nn.Module):
    """t in [0, 1] (not x1000) -> [cos, sin] of 256 frequencies -> MLP."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class LabelEmbedder(nn.Module):
    """Class table with one extra learned row (index num_classes) for the null class."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class PatchEmbed(nn.Module):
    """Bottleneck patch embed: conv p x p (C -> d', no bias), then 1x1 conv (d' -> h)."""

    def __init__(self, patch: int, channels: int, bottleneck: int, hidden: int):
        super().__init__()
        self.proj1 = nn.Conv2d(channels, bottleneck, patch, stride=patch, bias=False)
        self.proj2 = nn.Conv2d(bottleneck, hidden, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, T, h) row-major tokens."""
        # contiguous: every block then gets the same memory layout, so a compiled block is not
        # recompiled for the first block's transposed input
        return self.proj2(self.proj1(x)).flatten(2).transpose(1, 2).contiguous()


class TokenEmbed(nn.Module):
    """1x1 bottleneck for a (B, T, C) token grid: C -> d' (no bias) -> h. Two per-token linears."""

    def __init__(self, channels: int, bottleneck: int, hidden: int):
        super().__init__()
        self.proj1 = nn.Conv2d(channels, bottleneck, 1, bias=False)
        self.proj2 = nn.Conv2d(bottleneck, hidden, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.proj1.weight.flatten(1))
        return F.linear(x, self.proj2.weight.flatten(1), self.proj2.bias)


class SwiGLU(nn.Module):
    """w12 -> [gate | value], SiLU(gate) * value -> dropout -> w3."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)              # gate, value: (B, L, H_f) each
        return self.w3(self.drop(F.silu(a) * b))          # (B, L, h)


class FinalLayer(nn.Module):
    """RMSNorm, adaLN (shift, scale), linear to the stream's output width."""

    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm_final = RMSNorm(hidden)
        self.linear = nn.Linear(hidden, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)          # (B, h) each
        return self.linear(modulate(self.norm_final(x), shift, scale))    # (B, T, out)


def sincos_2d(hidden: int, grid: int, positions: Optional[np.ndarray] = None) -> torch.Tensor:
    """Fixed 2D sin-cos table (T = grid^2, h); the first half encodes the column, the second the row.

    ``positions``: the ``grid`` coordinates along each axis (default 0 .. grid-1); a stream on a grid of
    its own passes its cell centres in pixel-grid units (:func:`cell_centres`).
    """
    d4 = hidden // 4
    omega = 1.0 / 10000 ** (np.arange(d4, dtype=np.float64) / d4)
    axis = np.arange(grid, dtype=np.float64) if positions is None else np.asarray(positions, dtype=np.float64)
    rows, cols = np.meshgrid(axis, axis, indexing="ij")
    parts = []
    for pos in (cols.reshape(-1), rows.reshape(-1)):
        out = pos[:, None] * omega[None]
        parts += [np.sin(out), np.cos(out)]
    return torch.from_numpy(np.concatenate(parts, axis=1)).float()


def sincos_1d(hidden: int, n: int) -> torch.Tensor:
    """Fixed 1D sin-cos table (n, h) over the token index: [sin(i w), cos(i w)], w_k = 10000^(-k / (h/2))."""
    half = hidden // 2
    omega = 1.0 / 10000 ** (np.arange(half, dtype=np.float64) / half)
    out = np.arange(n, dtype=np.float64)[:, None] * omega[None]
    return torch.from_numpy(np.concatenate([np.sin(out), np.cos(out)], axis=1)).float()


def cell_centres(grid: int, pixel_grid: int) -> np.ndarray:
    """Centres of a ``grid`` x ``grid`` partition of the image, in pixel-grid token units (float64).

    Cell i spans pixel-grid tokens [i s, (i + 1) s) with s = pixel_grid / grid, so its centre is
    (i + 1/2) s - 1/2; for grid == pixel_grid these are the integers 0 .. grid-1.
    """
    step = pixel_grid / grid
    return (np.arange(grid, dtype=np.float64) + 0.5) * step - 0.5


def rope_tables(head_dim: int, grid: int, prefix: int = 0, theta: float = 10000.0,
                positions: Optional[np.ndarray] = None):
    """2D axial RoPE (cos, sin) of shape (prefix + grid^2, head_dim).

    Channels [0, d/2) rotate by the row index, [d/2, d) by the column index; each frequency rotates
    one adjacent channel pair. ``prefix`` identity rows (cos 1, sin 0) leave in-context tokens unrotated.
    ``positions``: the coordinates along each axis (default 0 .. grid-1), as in :func:`sincos_2d`.
    """
    half = head_dim // 2
    freqs = 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float32)[: half // 2] / half)
    pos = torch.arange(grid, dtype=torch.float32) if positions is None else torch.tensor(positions, dtype=torch.float32)
    f = (pos[:, None] * freqs[None]).repeat_interleave(2, dim=-1)  # (grid, half)
    rows = f[:, None, :].expand(grid, grid, half)
    cols = f[None, :, :].expand(grid, grid, half)
    angles = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
    cos, sin = angles.cos(), angles.sin()
    return with_identity_prefix(cos, sin, prefix)


def with_identity_prefix(cos: torch.Tensor, sin: torch.Tensor, prefix: int):
    """``prefix`` identity rows (cos 1, sin 0) before a RoPE table: tokens that are not rotated."""
    if not prefix:
        return cos, sin
    return (torch.cat([torch.ones(prefix, cos.shape[1]), cos]), torch.cat([torch.zeros(prefix, sin.shape[1]), sin]))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rot(x) * sin with rot(a, b) = (-b, a) on adjacent channel pairs."""
    pairs = x.unflatten(-1, (-1, 2))                                              # (..., L, d/2, 2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)    # (..., L, d)
    return x * cos + rotated * sin                                                # cos, sin: (L, d)
