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
    """Tile (N, C, H, W) uint8 images into one RGB picture, ``nrow`` images per row (default: a square),
    on white with ``pad`` pixels between them (torchvision's ``make_grid``), enlarged ``scale`` times."""
    from torchvision.utils import make_grid as tile
    n = images_u8.shape[0]
    nrow = nrow or math.ceil(math.sqrt(n))
    images = images_u8.detach().cpu()
    if n == 1:   # torchvision returns a lone image as it is: give it the border every grid has
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        grid = torch.nn.functional.pad(images[0], (pad, pad, pad, pad), value=255)
    else:
        grid = tile(images, nrow=nrow, padding=pad, pad_value=255)   # 1 channel -> 3 (RGB)
    img = Image.fromarray(np.ascontiguousarray(grid.permute(1, 2, 0).numpy()))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img


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
