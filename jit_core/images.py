"""Image files: sample grids and PNG folders (uint8, lossless)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from jit_core import durable


def to_pil(img_u8: torch.Tensor) -> Image.Image:
    """(C, H, W) uint8 -> PIL (grayscale for C=1)."""
    arr = img_u8.detach().cpu().permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def make_grid(images_u8: torch.Tensor, nrow: int | None = None, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tile (N, C, H, W) uint8 images into one RGB picture, ``nrow`` images per row."""
    n, c, h, w = images_u8.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, dtype=np.uint8)
    imgs = images_u8.detach().cpu().permute(0, 2, 3, 1).numpy()
    if c == 1:
        imgs = np.repeat(imgs, 3, axis=-1)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y:y + h, x:x + w] = imgs[i]
    img = Image.fromarray(canvas)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def save_grid(images_u8: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """The images as one grid PNG at ``path`` (written atomically, never through a link)."""
    path = Path(path)
    durable.ensure_dir(path.parent)
    return durable.save_image(path, make_grid(images_u8, nrow, scale=scale))


def save_pngs(images_u8: torch.Tensor, folder: str | Path, start_index: int = 0) -> None:
    """Write ``{index:05d}.png`` files (the evaluation protocol's naming)."""
    folder = durable.ensure_dir(Path(folder))
    for i, img in enumerate(images_u8):
        durable.save_image(folder / f"{start_index + i:05d}.png", to_pil(img), fsync=False)   # many small files
