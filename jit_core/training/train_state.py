"""``TrainState``: everything a checkpoint holds, as one object, and its conversion to and from the checkpoint files.

A checkpoint folder (:mod:`jit_core.runs.checkpoint`) holds ``model``, ``ema1``, ``ema2`` (and ``aux``, the plugins'
trainable modules) as safetensors, and ``trainer.pt`` with the optimizer, the step, the wall time, the skipped
steps, every (virtual) rank's RNG state, the config and the ranks' count. The data position is the step: the
batch order is a function of (seed, rank, epoch), replayed from any step (:mod:`.batches`). The file format is
the one jit-vco has always written, so older run folders resume.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from jit_core.config import Config, ConfigError
from jit_core.errors import CheckpointError
from jit_core.model import JiT
from jit_core.runs.checkpoint import WEIGHT_NAMES
from jit_core.runs.compat import check_compatible
from jit_core.training.accumulate import VirtualRanks
from jit_core.training.state import EMA, set_rng_state

EMA_NAMES = ("ema1", "ema2")


@dataclass
class TrainState:
    """What a resume must restore to continue bit-identically: the network, its EMAs, the plugins' modules, the
    optimizer, the step counters and every virtual rank's RNG (held by ``ranks``)."""

    model: JiT
    aux: nn.ModuleDict
    emas: list[EMA]
    optimizer: torch.optim.Optimizer
    ranks: VirtualRanks
    step: int = 0             # optimizer steps done (skipped non-finite steps included): also the data position
    elapsed: float = 0.0      # training wall time in seconds, over every resume
    skipped: int = 0          # steps skipped for non-finite values (train.nan_policy=skip)

    # ------------------------------------------------------------------ to the checkpoint
    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """The safetensors files' contents: model, ema1, ema2 and (when a plugin trains modules) aux."""
        out = {"model": self.model.state_dict()}
        out.update({name: ema.state_dict(self.model) for name, ema in zip(EMA_NAMES, self.emas)})
        if len(self.aux):
            out["aux"] = self.aux.state_dict()
        return out

    def trainer_file(self, config: Config, rng_per_rank: list[dict]) -> dict:
        """``trainer.pt``'s content; ``rng_per_rank``: every virtual rank's RNG state of the whole run, in rank order
        (gathered across processes by the caller)."""
        # world_size: the recipe's ranks (processes x train.grad_accum), whose data order and RNG a resume needs
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "elapsed": self.elapsed,
                 "skipped": self.skipped, "rng": rng_per_rank[0], "config": config.to_json(),
                 "world_size": self.ranks.world}
        if self.ranks.world > 1:  # every rank's RNG, so each rank resumes its own stream
            state["rng_per_rank"] = rng_per_rank
        return state

    # ------------------------------------------------------------------ from the checkpoint
    def load(self, weights: dict[str, dict[str, torch.Tensor]], state: dict, config: Config, path: Path) -> None:
        """Restore every part from a checkpoint's ``(weights, state)`` (:func:`jit_core.runs.checkpoint.load_checkpoint`)
        of the folder ``path``. Everything is checked before anything is changed that a one-line error could not
        undo: a checkpoint that does not fit this run raises :class:`CheckpointError` or :class:`ConfigError`."""
        for name in WEIGHT_NAMES:      # the EMAs too: a wrong-shaped EMA file is refused in one line
            if name not in weights:
                raise CheckpointError(f"{path} has no {name}.safetensors, which a resume needs; resume from another "
                                      "checkpoint")
            check_compatible(weights[name], self.model, str(path / f"{name}.safetensors"))
        if state.get("world_size", 1) != self.ranks.world:
            raise ConfigError(f"{path} was written by {state.get('world_size')} ranks (processes x train.grad_accum), "
                              f"now {self.ranks.world // self.ranks.accum} x {self.ranks.accum} = {self.ranks.world}: "
                              f"resume with processes x train.grad_accum = {state.get('world_size')} (data order and "
                              "RNG are per rank)")
        self.model.load_state_dict(weights["model"])
        for ema, name in zip(self.emas, EMA_NAMES):
            ema.load(weights[name], self.model)
        if len(self.aux):
            self.aux.load_state_dict(weights["aux"])
        if state.get("optimizer"):  # empty for an imported official checkpoint
            self._load_optimizer(state["optimizer"], config, path)
        self.step, self.elapsed, self.skipped = state["step"], state.get("elapsed", 0.0), state.get("skipped", 0)
        if "rng" in state:
            self._load_rng(state, path)

    def _load_optimizer(self, saved: dict, config: Config, path: Path) -> None:
        try:
            self.optimizer.load_state_dict(saved)
            check_optimizer_state(self.optimizer)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"{path / 'trainer.pt'} holds an optimizer state that does not fit this run "
                                  f"({e}); resume from another checkpoint") from e
        o = config.optim   # the config's values, not the saved ones (a resume may change them: --allow-change)
        for group, decay in zip(self.optimizer.param_groups, (0.0, o.weight_decay)):
            group["weight_decay"], group["betas"] = decay, tuple(o.betas)

    def _load_rng(self, state: dict, path: Path) -> None:
        try:
            per_rank = state.get("rng_per_rank") or [state["rng"]]
            for rank in self.ranks.ranks:   # validated here, applied below
                set_rng_state(per_rank[rank])
            self.ranks.set_rng_states([per_rank[rank] for rank in self.ranks.ranks])
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"{path / 'trainer.pt'} holds a malformed RNG state ({e}); it was not "
                                  "written by jit-vco: resume from another checkpoint") from e


def check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """ValueError unless every per-parameter state tensor (AdamW's moments) has its parameter's shape:
    ``load_state_dict`` does not check it, and the first step after the resume would fail."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != p.shape:
                    raise ValueError(f"its {key} has shape {list(value.shape)} for a parameter of shape {list(p.shape)}")
