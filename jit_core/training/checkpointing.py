"""A trainer's checkpoint: weights (model, EMAs, plugin modules) and state (optimizer, step, every RNG), and back."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from jit_core.config import ConfigError
from jit_core.distributed import barrier
from jit_core.runs import checkpoint as ckpt
from jit_core.runs.compat import check_compatible
from jit_core.training.metrics_log import roll_back
from jit_core.training.state import set_rng_state

log = logging.getLogger("jit")


def _gather_rng(trainer) -> list:
    """Every (virtual) rank's RNG state, in rank order: each process holds its ``train.grad_accum`` ranks'."""
    mine = trainer.ranks.rng_states()
    if not trainer.dist.enabled:
        return mine
    import torch.distributed as dist
    out = [None] * trainer.dist.world_size
    dist.all_gather_object(out, mine)
    return [state for process in out for state in process]


def save(trainer) -> Path:
    """Write the trainer's checkpoint (rank 0 writes; every rank contributes its RNG state); returns its folder."""
    if trainer.dist.is_main:
        weights = {"model": trainer.model.state_dict(),
                   "ema1": trainer.emas[0].state_dict(trainer.model), "ema2": trainer.emas[1].state_dict(trainer.model)}
        if len(trainer.aux):
            weights["aux"] = trainer.aux.state_dict()
        per_rank = _gather_rng(trainer)
        # world_size: the recipe's ranks (processes x train.grad_accum), whose data order and RNG a resume needs
        state = {"step": trainer.step, "optimizer": trainer.optimizer.state_dict(), "elapsed": trainer.elapsed,
                 "skipped": trainer.skipped, "rng": per_rank[0], "config": trainer.config.to_json(),
                 "world_size": trainer.ranks.world}
        if trainer.ranks.world > 1:  # every rank's RNG, so each rank resumes its own stream
            state["rng_per_rank"] = per_rank
        trainer.last_checkpoint = ckpt.save_checkpoint(trainer.run_dir, trainer.step, weights, state,
                                                       keep_every=trainer.config.train.keep_every)
    elif trainer.dist.enabled:
        _gather_rng(trainer)
        trainer.last_checkpoint = trainer.run_dir / "checkpoints" / f"step-{trainer.step:08d}"  # same decisions on every rank
    barrier(trainer.dist)
    return trainer.last_checkpoint


def check_optimizer_state(optimizer) -> None:
    """ValueError unless every per-parameter state tensor (AdamW's moments) has its parameter's shape:
    ``load_state_dict`` does not check it, and the first step after the resume would fail."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != p.shape:
                    raise ValueError(f"its {key} has shape {list(value.shape)} for a parameter of shape {list(p.shape)}")


def resume(trainer) -> None:
    """Restore the trainer from the run folder's latest verified checkpoint."""
    path = ckpt.latest_checkpoint(trainer.run_dir)
    weights, state = ckpt.load_checkpoint(path)
    for name in ckpt.WEIGHT_NAMES:      # the EMAs too: a wrong-shaped EMA file is refused in one line
        if name not in weights:
            raise ckpt.CheckpointError(f"{path} has no {name}.safetensors, which a resume needs; resume from another "
                                       "checkpoint")
        check_compatible(weights[name], trainer.model, str(path / f"{name}.safetensors"))
    if state.get("world_size", 1) != trainer.ranks.world:
        raise ConfigError(f"{path} was written by {state.get('world_size')} ranks (processes x train.grad_accum), "
                          f"now {trainer.dist.world_size} x {trainer.ranks.accum} = {trainer.ranks.world}: resume "
                          f"with processes x train.grad_accum = {state.get('world_size')} (data order and RNG are per rank)")
    trainer.model.load_state_dict(weights["model"])
    for ema, key in zip(trainer.emas, ("ema1", "ema2")):
        ema.load(weights[key], trainer.model)
    if len(trainer.aux):
        trainer.aux.load_state_dict(weights["aux"])
    if state.get("optimizer"):  # empty for an imported official checkpoint
        try:
            trainer.optimizer.load_state_dict(state["optimizer"])
            check_optimizer_state(trainer.optimizer)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
            raise ckpt.CheckpointError(f"{path / 'trainer.pt'} holds an optimizer state that does not fit this run "
                                       f"({e}); resume from another checkpoint") from e
        o = trainer.config.optim   # the config's values, not the saved ones (a resume may change them: --allow-change)
        for group, decay in zip(trainer.optimizer.param_groups, (0.0, o.weight_decay)):
            group["weight_decay"], group["betas"] = decay, tuple(o.betas)
    trainer.step, trainer.elapsed, trainer.skipped = state["step"], state.get("elapsed", 0.0), state.get("skipped", 0)
    if "rng" in state:
        try:
            per_rank = state.get("rng_per_rank") or [state["rng"]]
            for rank in trainer.ranks.ranks:   # validated here, applied below
                set_rng_state(per_rank[rank])
            trainer.ranks.set_rng_states([per_rank[rank] for rank in trainer.ranks.ranks])
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:
            raise ckpt.CheckpointError(f"{path / 'trainer.pt'} holds a malformed RNG state ({e}); it was not "
                                       "written by jit-vco: resume from another checkpoint") from e
    trainer.last_checkpoint = path
    if trainer.dist.is_main:
        dropped = roll_back(trainer.run_dir / "metrics.jsonl", trainer.step)
        log.info("resumed from %s (step %d)%s", path, trainer.step,
                 f"; dropped {dropped} metrics.jsonl lines logged after it" if dropped else "")
