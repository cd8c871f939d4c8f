"""JiT building blocks (paper Sec. 4 / official model_jit.py): embedders, RMSNorm, RoPE, SwiGLU, heads."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation; (B, h) vectors broadcast over tokens."""
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
        return self.proj2(self.proj1(x)).flatten(2).transpose(1, 2)


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
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.drop(F.silu(a) * b))


class FinalLayer(nn.Module):
    """RMSNorm, adaLN (shift, scale), linear to the stream's output width."""

    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm_final = RMSNorm(hidden)
        self.linear = nn.Linear(hidden, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def sincos_2d(hidden: int, grid: int) -> torch.Tensor:
    """Fixed 2D sin-cos table (T, h); the first half encodes the column, the second the row."""
    d4 = hidden // 4
    omega = 1.0 / 10000 ** (np.arange(d4, dtype=np.float64) / d4)
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    parts = []
    for pos in (cols.reshape(-1), rows.reshape(-1)):
        out = pos[:, None] * omega[None]
        parts += [np.sin(out), np.cos(out)]
    return torch.from_numpy(np.concatenate(parts, axis=1)).float()


def rope_tables(head_dim: int, grid: int, prefix: int = 0, theta: float = 10000.0):
    """2D axial RoPE (cos, sin) of shape (prefix + T, head_dim).

    Channels [0, d/2) rotate by the row index, [d/2, d) by the column index; each frequency rotates
    one adjacent channel pair. ``prefix`` identity rows (cos 1, sin 0) leave in-context tokens unrotated.
    """
    half = head_dim // 2
    freqs = 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float32)[: half // 2] / half)
    pos = torch.arange(grid, dtype=torch.float32)
    f = (pos[:, None] * freqs[None]).repeat_interleave(2, dim=-1)  # (grid, half)
    rows = f[:, None, :].expand(grid, grid, half)
    cols = f[None, :, :].expand(grid, grid, half)
    angles = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
    cos, sin = angles.cos(), angles.sin()
    if prefix:
        cos = torch.cat([torch.ones(prefix, head_dim), cos])
        sin = torch.cat([torch.zeros(prefix, head_dim), sin])
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rot(x) * sin with rot(a, b) = (-b, a) on adjacent channel pairs."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos + rotated * sin
