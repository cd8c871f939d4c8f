"""Gradient accumulation that keeps the recipe's global step: one process plays ``train.grad_accum`` ranks.

With ``W`` processes and ``train.grad_accum = A`` the run is the recipe of ``W x A`` ranks of
``optim.batch_size`` images each (the *virtual* ranks ``r = rank x A + a``, ``a < A``), trained as ``A``
micro-batches per optimizer step on each process:

- **data**: the batch sampler (the core's or a plugin's ``jit_batch_sampler``) is built once per virtual rank
  with ``world_size = W x A``; a step's batch is their ``A`` batches, one micro-batch each, so the images and a
  plugin's per-rank class groups are those of ``W x A`` ranks (:class:`VirtualRankSampler`);
- **randomness**: each virtual rank has its own global RNG state (torch, CUDA, Python, NumPy), seeded and
  advanced exactly as that rank's process would (:meth:`VirtualRanks.start`), and swapped in for its
  micro-batch, so noise, t and label drops are what rank ``r`` draws;
- **gradient**: each micro-batch's loss is divided by ``A`` and back-propagated (DDP synchronises only the
  last one), i.e. the mean over the ``W x A`` ranks, which DDP of ``W x A`` processes computes;
- the lr follows the real global batch (``batch_size x W x A``); clipping, the NaN check, AdamW, the EMAs,
  logging and checkpoints happen once per optimizer step; a checkpoint holds every virtual rank's RNG, so a
  run resumes exactly, also on another split of the same ``W x A`` ranks into processes and micro-batches.

``jit_core.distributed.data_rank_and_world()`` tells a plugin which (virtual) rank the current micro-batch is.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from jit_core.distributed import DistInfo, data_parallel_view
from jit_core.training.state import rng_state, seed_everything, set_rng_state

T = TypeVar("T")


class VirtualRankSampler:
    """The batch samplers of one process's virtual ranks as one: a step's batch is their batches, in order."""

    def __init__(self, samplers: Sequence):
        self.samplers = list(samplers)
        self.micro_batch = getattr(self.samplers[0], "batch_size", None) or len(next(iter(self.samplers[0])))
        self.batch_size = self.micro_batch * len(self.samplers)

    def set_epoch(self, epoch: int) -> None:
        for s in self.samplers:
            s.set_epoch(epoch)

    def __len__(self) -> int:
        return min(len(s) for s in self.samplers)

    def __iter__(self) -> Iterator[list[int]]:
        for batches in zip(*self.samplers):
            yield [i for batch in batches for i in batch]


class VirtualRanks:
    """The virtual ranks of this process and their RNG states (``accum == 1``: the process itself, untouched)."""

    def __init__(self, dist: DistInfo, accum: int):
        self.accum = accum
        self.world = dist.world_size * accum
        self.ranks = [dist.rank * accum + a for a in range(accum)]
        self._states: list[dict] = []   # filled by start() when accum > 1

    def start(self, seed: int, build: Callable[[], T], replay: Callable[[], object]) -> T:
        """Seed the process as its first virtual rank and ``build()`` (the network and plugin modules: what draws
        from the RNG before the first step); each further virtual rank's RNG is what its own process would hold
        after the same build, so the build is replayed under its seed (``replay``: the same build on the CPU, whose
        generator the initialisation draws from) and the replica dropped (DDP keeps rank 0's weights anyway).
        The replays cost start-up time: B/16 builds in ~7 s on 2 CPU cores. Returns the first build's result."""
        seed_everything(seed + self.ranks[0])
        built = build()
        if self.accum > 1:
            states = [rng_state()]
            for r in self.ranks[1:]:
                seed_everything(seed + r)
                replay()
                states.append(rng_state())
            set_rng_state(states[0])
            self._states = states
        return built

    @contextlib.contextmanager
    def micro_batch(self, a: int):
        """Run one micro-batch as virtual rank ``a``: its RNG state in, and back out afterwards."""
        if self.accum == 1:
            yield
            return
        set_rng_state(self._states[a])
        try:
            with data_parallel_view(self.ranks[a], self.world):
                yield
        finally:
            self._states[a] = rng_state()
            set_rng_state(self._states[0])

    def rng_states(self) -> list[dict]:
        """This process's virtual ranks' RNG states, in rank order (for a checkpoint)."""
        return [rng_state()] if self.accum == 1 else list(self._states)

    def set_rng_states(self, states: Sequence[dict]) -> None:
        """Restore the states :meth:`rng_states` returned (``states[a]`` for virtual rank ``a``)."""
        if self.accum == 1:
            set_rng_state(states[0])
            return
        self._states = list(states)
        set_rng_state(self._states[0])


def accumulate_gradients(objective, images, labels, ranks: VirtualRanks, forward: Callable):
    """Forward and backward of one optimizer step's batch, as ``ranks.accum`` micro-batches (one per virtual
    rank, each as that rank: its RNG, its rank for plugins); ``forward(objective, images, labels)`` returns
    ``(total, terms)``. Gradients end as the mean over the virtual ranks; returns the mean total and terms."""
    import torch
    A = ranks.accum
    if A == 1:
        total, losses = forward(objective, images, labels)
        total.backward()
        return total, losses
    totals: list[torch.Tensor] = []
    terms: dict[str, list[torch.Tensor]] = {}
    for a, (x, y) in enumerate(zip(images.chunk(A), labels.chunk(A))):
        # DDP all-reduces on the last micro-batch only; the others accumulate locally
        sync = a == A - 1 or not hasattr(objective, "no_sync")
        with ranks.micro_batch(a), (contextlib.nullcontext() if sync else objective.no_sync()):
            total, losses = forward(objective, x, y)
            (total / A).backward()
        totals.append(total.detach())
        for k, v in losses.items():
            terms.setdefault(k, []).append(v.detach())
    return torch.stack(totals).mean(), {k: torch.stack(v).mean() for k, v in terms.items()}
