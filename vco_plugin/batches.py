"""Class-balanced batches for the hybrid loss (spec §6): each rank's batch holds few classes.

Each rank draws every batch on its own: ``classes_per_batch`` distinct classes uniformly at random,
then ``samples_per_class`` images of each without replacement (with replacement only when the
class is smaller). Batches are independent, so images may repeat within an epoch. The generator is
seeded with ``seed + epoch * world_size + rank``, so a batch is a pure function of
(seed, epoch, rank, position) and a resumed run replays the same data.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


class ClassBalancedBatchSampler:
    """Yields lists of dataset indices; ``len`` = floor(|D| / (N_c * M * world_size)) batches per epoch."""

    def __init__(self, targets: Sequence[int], classes_per_batch: int, samples_per_class: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, drop_last: bool = True):
        if classes_per_batch < 1 or samples_per_class < 1:
            raise ValueError(f"classes_per_batch ({classes_per_batch}) and samples_per_class "
                             f"({samples_per_class}) must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        targets = torch.as_tensor(np.asarray(targets, dtype=np.int64)).view(-1)
        self.classes = torch.unique(targets)
        if classes_per_batch > len(self.classes):
            raise ValueError(f"classes_per_batch={classes_per_batch} but the dataset has only "
                             f"{len(self.classes)} classes")
        self.members = [torch.nonzero(targets == c).view(-1) for c in self.classes]
        self.num_samples = len(targets)
        self.classes_per_batch, self.samples_per_class = classes_per_batch, samples_per_class
        self.rank, self.world_size, self.seed, self.drop_last = rank, world_size, seed, drop_last
        self.epoch = 0

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.samples_per_class

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        per_step = self.batch_size * self.world_size
        n = self.num_samples // per_step if self.drop_last else -(-self.num_samples // per_step)
        return max(n, 0)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch * self.world_size + self.rank)
        m = self.samples_per_class
        for _ in range(len(self)):
            batch = []
            for c in torch.randperm(len(self.classes), generator=g)[:self.classes_per_batch].tolist():
                idx = self.members[c]
                pick = (torch.randperm(len(idx), generator=g)[:m] if len(idx) >= m
                        else torch.randint(len(idx), (m,), generator=g))
                batch += idx[pick].tolist()
            yield batch
