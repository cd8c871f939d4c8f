"""Batch order: a deterministic, sharded, resumable default, and the loader that replays it.

The batches of an epoch are a pure function of (seed, epoch, rank), so a resumed run skips the
batches it already trained on (indices only, no image is decoded) and continues with the same data.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from jit_core.training.loader_options import loader_worker_options


class DefaultBatchSampler:
    """Shuffle with seed + epoch, shard across ranks (rank::world), batches of ``batch_size``, drop_last."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int):
        self.n, self.batch_size, self.rank, self.world, self.seed = n, batch_size, rank, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.world // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g)[self.rank::self.world].tolist()
        for i in range(len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size]


class _Skip:
    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        for i, batch in enumerate(self.sampler):
            if i >= self.skip:
                yield batch

    def __len__(self):
        return max(0, len(self.sampler) - self.skip)


class ResumableBatches:
    """Epoch after epoch of ``(uint8 images, labels)`` batches, starting at any global step."""

    def __init__(self, sampler, dataset, data_config, device: torch.device):
        self.sampler, self.dataset, self.cfg, self.device = sampler, dataset, data_config, device
        self.batch_size = getattr(sampler, "batch_size", None) or len(next(iter(sampler)))

    def __len__(self) -> int:
        return len(self.sampler)

    def iterate(self, start_step: int):
        per_epoch = len(self.sampler)
        epoch, skip = divmod(start_step, per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            loader = DataLoader(self.dataset, batch_sampler=_Skip(self.sampler, skip),
                                num_workers=self.cfg.num_workers,
                                generator=torch.Generator().manual_seed(epoch),  # not the global RNG: resume stays exact
                                pin_memory=self.cfg.pin_memory and self.device.type == "cuda",
                                **loader_worker_options(self.cfg.num_workers))
            yield from loader
            epoch, skip = epoch + 1, 0
