"""Sample grids come from torchvision's make_grid: the same pixels as the hand-written tiling they replaced."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jit_core.images import make_grid, save_grid


def _tiling(images_u8: torch.Tensor, nrow: int, pad: int = 2) -> np.ndarray:
    """The tiling written out by hand: white canvas, ``pad`` px around and between, row-major, gray -> RGB."""
    n, c, h, w = images_u8.shape
    rows = math.ceil(n / nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, dtype=np.uint8)
    imgs = images_u8.permute(0, 2, 3, 1).numpy()
    imgs = np.repeat(imgs, 3, axis=-1) if c == 1 else imgs
    for i in range(n):
        r, col = divmod(i, nrow)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = imgs[i]
    return canvas


@pytest.mark.parametrize("n,c,nrow", [(40, 1, 4), (40, 3, 10), (7, 3, None), (10, 1, 3), (1, 3, None), (1, 1, None)])
def test_grid_pixels_are_the_hand_written_tiling(n, c, nrow):
    images = torch.randint(0, 256, (n, c, 8, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    want = _tiling(images, nrow or math.ceil(math.sqrt(n)))
    assert np.array_equal(np.asarray(make_grid(images, nrow)), want)
    big = np.asarray(make_grid(images, nrow, scale=2))
    assert np.array_equal(big, want.repeat(2, axis=0).repeat(2, axis=1))


def test_save_grid_writes_the_png(tmp_path):
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    from PIL import Image
    path = save_grid(images, tmp_path / "g" / "grid.png", nrow=2)
    with Image.open(path) as img:
        assert np.array_equal(np.asarray(img), _tiling(images, 2))
