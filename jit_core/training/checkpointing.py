"""A :class:`~jit_core.training.train_state.TrainState` to its run folder's checkpoint, and back: who writes
(rank 0), what every rank contributes (its RNG states), and which checkpoint a resume reads (the latest verified)."""
from __future__ import annotations

from pathlib import Path

from jit_core.config import Config
from jit_core.distributed import DistInfo, barrier
from jit_core.runs import checkpoint as ckpt
from jit_core.training.train_state import TrainState


def gather_rng(state: TrainState, dist: DistInfo) -> list:
    """Every (virtual) rank's RNG state, in rank order: each process holds its ``train.grad_accum`` ranks'."""
    mine = state.ranks.rng_states()
    if not dist.enabled:
        return mine
    import torch.distributed as tdist
    out: list = [None] * dist.world_size
    tdist.all_gather_object(out, mine)
    return [rng for process in out for rng in process]


def save(state: TrainState, config: Config, run_dir: Path, dist: DistInfo) -> Path:
    """Write ``state`` as the checkpoint of its step (rank 0 writes; every rank contributes its RNG states);
    returns the checkpoint's folder, the same on every rank."""
    if dist.is_main:
        rng = gather_rng(state, dist)
        path = ckpt.save_checkpoint(run_dir, state.step, state.weights(), state.trainer_file(config, rng),
                                    keep_every=config.train.keep_every)
    else:
        if dist.enabled:
            gather_rng(state, dist)
        path = run_dir / "checkpoints" / f"step-{state.step:08d}"   # same decisions on every rank
    barrier(dist)
    return path


def resume(state: TrainState, config: Config, run_dir: Path) -> Path:
    """Restore ``state`` from the run folder's latest verified checkpoint; returns that checkpoint's folder."""
    path = ckpt.latest_checkpoint(run_dir)
    if path is None:
        raise ckpt.CheckpointError(f"{run_dir} has no complete checkpoint to resume from; start the run again")
    weights, saved = ckpt.load_checkpoint(path)
    state.load(weights, saved, config, path)
    return path
