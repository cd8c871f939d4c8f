"""The core's checks of a config. They only read: a check never fills in, rewrites or attaches anything.

:func:`check_values` is what any config must pass (a saved one before it is sampled); :func:`check_config`
adds what only a run on this machine needs (the device exists). The rest of a start's checks (data, model,
run folder) are in :mod:`jit_core.training.startup`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from .fields import ConfigError, check_fields


def check_values(cfg: Any) -> None:
    """Every :func:`option` field (choices and ranges) and the checks across fields (the CFG interval's order):
    what a saved config must pass before it is sampled or evaluated (the device it trained on need not exist)."""
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section):
            check_fields(section, f.name)
    lo, hi = cfg.sample.interval
    if not lo < hi:
        raise ConfigError(f"sample.interval={lo},{hi}: the CFG interval needs lo < hi (e.g. sample.interval=0.1,1.0)")


def check_config(cfg: Any) -> None:
    """The core's start-up checks of ``cfg`` that need no data or plugin: :func:`check_values`, then the device.

    The rest of a start runs in :func:`jit_core.training.startup.start_checks`: plugins and their
    options, the dataset (name, path), the model (name, image size), the batch sampler, the run folder.
    """
    check_values(cfg)
    check_device(cfg.train.device)


def check_device(name: str) -> None:
    """``train.device``: auto, cpu, cuda, cuda:N or mps, and available on this machine."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(f"train.device={name!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda"):
        import torch
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            raise ConfigError(f"train.device={name} but {'no CUDA device is' if not count else f'only {count} CUDA devices are'} "
                              "visible on this machine: use train.device=cpu (or auto)")
