"""The training loader prefetches with workers, and its batches (pixels and flips) do not depend on the
worker count: prefetching and worker processes change when a batch is decoded, never what it holds."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from jit_core.config import DataConfig, get_preset
from jit_core.data import ImageFolderDataset
from jit_core.training.batches import DefaultBatchSampler, ResumableBatches
from jit_core.training.loader_options import PREFETCH_FACTOR, loader_worker_options


def test_options():
    assert loader_worker_options(0) == {"persistent_workers": False}
    assert loader_worker_options(3) == {"persistent_workers": False, "prefetch_factor": PREFETCH_FACTOR}


def test_gpu_presets_have_enough_workers():
    assert get_preset("jit-b16").data.num_workers == 12
    assert get_preset("tiny").data.num_workers == 0


def _batches(root, workers: int, start: int, n: int):
    ds = ImageFolderDataset(root, 16, flip=True, seed=3)
    sampler = DefaultBatchSampler(len(ds), 4, rank=0, world_size=1, seed=3)
    batches = ResumableBatches(sampler, ds, DataConfig(name="folder", path=str(root), image_size=16,
                                                       num_workers=workers, pin_memory=False), torch.device("cpu"))
    it = batches.iterate(start)
    return [next(it) for _ in range(n)]


def test_same_batches_with_and_without_workers(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(8):
        (tmp_path / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"c{i % 2}" / f"{i}.png")
    ref = _batches(tmp_path, 0, 1, 4)          # starts mid-epoch, crosses into the next (2 batches per epoch)
    got = _batches(tmp_path, 2, 1, 4)
    for (x0, y0), (x1, y1) in zip(ref, got):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
