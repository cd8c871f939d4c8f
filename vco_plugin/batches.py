"""Class-balanced batches for the hybrid loss (V-Co, arXiv 2603.16792; docs/official-code.md#batches),
placed so that any world size keeps the recipe.

The paper's recipe, stated per *global* step: ``G`` class groups of ``S`` images. The released sampler
runs on every rank on its own: a rank draws its ``N_c`` classes uniformly at random *without*
replacement, then ``S`` images of each class without replacement (with replacement only when the class
is smaller). So a step holds ``G / N_c`` independent blocks of ``N_c`` distinct classes
(``classes_per_rank`` = ``N_c``; the block of the recipe's rank ``p`` is groups ``[p*N_c, (p+1)*N_c)``).
The released scripts run one class per rank (8 x 128 for the README command, 16 x 32 for B, 32 x 16 for
L, 64 x 16 for H: every group's class an independent draw); Table 4's run_a runs 2 classes x 32 per rank.
Here a step's groups are a function of (seed, epoch, position) only, and rank ``r`` of ``W`` takes
images ``[r*B, (r+1)*B)`` of the step's ``G*S = W*B`` images, so one process emulating 16 ranks draws
exactly the batches 16 ranks draw together. A rank holds whole groups
(``G`` a multiple of ``W``) or a part of one (``W`` a multiple of ``G``); :func:`local_group_ids`
gives the hybrid loss the groups of the local batch, as the paper's per-rank group.

A resumed run replays the same data: a batch depends on (seed, epoch, position, rank, W) alone.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

PAPER_MIN_GROUPS = 8     # the fewest groups per step of the paper's runs (README command: 8 GPUs x 1 class)


def group_size(groups_per_step: int, batch_size: int, world_size: int) -> int:
    """Images per group; raises ValueError unless the step's groups can be placed on the ranks."""
    global_batch = batch_size * world_size
    if groups_per_step < 1 or global_batch % groups_per_step:
        raise ValueError(f"vco.groups_per_step={groups_per_step} does not divide the global batch "
                         f"{global_batch} (optim.batch_size={batch_size} x {world_size} ranks): choose a divisor")
    if groups_per_step % world_size and world_size % groups_per_step:
        raise ValueError(f"vco.groups_per_step={groups_per_step} groups cannot be placed on {world_size} ranks "
                         "(each rank holds whole groups or a part of one): use a multiple or a divisor of the "
                         "number of ranks")
    return global_batch // groups_per_step


def local_group_ids(batch_size: int, groups_per_step: int, world_size: int) -> torch.Tensor:
    """Group id of each position of a rank's batch (all 0 when the rank holds a part of one group)."""
    size = min(group_size(groups_per_step, batch_size, world_size), batch_size)
    return torch.arange(batch_size) // size


class GroupedClassBatchSampler:
    """Yields a rank's lists of dataset indices; ``len`` = floor(|D| / global batch) batches per epoch."""

    def __init__(self, targets: Sequence[int], groups_per_step: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, classes_per_rank: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.group_size = group_size(groups_per_step, batch_size, world_size)
        if classes_per_rank < 1 or groups_per_step % classes_per_rank:
            raise ValueError(f"vco.groups_per_step={groups_per_step} is not a multiple of "
                             f"vco.classes_per_rank={classes_per_rank}: the step holds whole ranks of the recipe")
        labels = np.asarray(targets, dtype=np.int64).reshape(-1)
        self.classes = np.unique(labels)
        if classes_per_rank > len(self.classes):
            raise ValueError(f"vco.classes_per_rank={classes_per_rank} distinct classes cannot be drawn from "
                             f"{len(self.classes)} classes: use at most {len(self.classes)}")
        self.classes_per_rank = classes_per_rank
        self.members = [np.flatnonzero(labels == c) for c in self.classes]
        self.num_samples = len(labels)
        self.groups_per_step, self.batch_size = groups_per_step, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def warn_if_few_classes(self) -> None:
        """Warn when a step holds fewer class groups than any of the paper's runs (and the data has more classes)."""
        g = self.groups_per_step
        if g < min(PAPER_MIN_GROUPS, len(self.classes)):
            log.warning("vco: every step holds at most %d class group(s) of %d images (vco.groups_per_step=%d); the "
                        "paper's runs hold 8 to 64 per step and one class per step changes the optimisation: set "
                        "vco.groups_per_step (e.g. 8)", g, self.group_size, g)

    def step_groups(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
        """One global step: ``groups_per_step`` (class, indices) pairs drawn from ``rng``."""
        n, per_rank = len(self.classes), self.classes_per_rank
        if per_rank == 1:    # one class per rank of the recipe: every group's class an independent draw
            classes = rng.integers(n, size=self.groups_per_step)
        else:                # each rank of the recipe: its classes without replacement, independently of the others
            classes = np.concatenate([rng.choice(n, size=per_rank, replace=False)
                                      for _ in range(self.groups_per_step // per_rank)])
        groups = []
        for c in classes.tolist():
            idx = self.members[c]
            pick = rng.choice(len(idx), size=self.group_size, replace=len(idx) < self.group_size)
            groups.append((int(self.classes[c]), idx[pick]))
        return groups

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        lo = self.rank * self.batch_size
        for _ in range(len(self)):
            step = np.concatenate([idx for _, idx in self.step_groups(rng)])
            yield step[lo:lo + self.batch_size].tolist()
