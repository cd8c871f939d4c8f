"""Training: the loop (``trainer.py``) and its parts, each one job (see the module docstring of ``trainer``).

``from jit_core.training import Trainer, train``.
"""
from jit_core.training.nonfinite import NonFiniteLossError
from jit_core.training.optim import lr_at, param_groups
from jit_core.training.run_dir import RESUMABLE_CHANGES, config_diff, prepare_run_dir
from jit_core.training.state import EMA, rng_state, set_rng_state
from jit_core.training.train_state import TrainState
from jit_core.training.trainer import Trainer, TrainResult, train

__all__ = ["EMA", "NonFiniteLossError", "RESUMABLE_CHANGES", "TrainResult", "Trainer", "config_diff", "lr_at",
           "param_groups", "prepare_run_dir", "rng_state", "set_rng_state", "train", "TrainState"]
