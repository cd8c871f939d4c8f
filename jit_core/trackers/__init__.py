"""The built-in experiment trackers: log sinks (:mod:`jit_core.logsinks`) behind the ``jit_log_sinks`` hook.

Each module here is a plugin registered in every plugin manager (like the core's defaults) and off
until its switch in the config's ``log`` section is on: ``log.tensorboard=true`` (:mod:`.tensorboard`),
``log.wandb=true`` (:mod:`.wandb`). Their packages are optional extras; :func:`check` (a start-up
check, so also ``jit train --dry-run``) refuses a switched-on tracker whose package is missing.
"""
from __future__ import annotations

import importlib

from jit_core.config import Config, ConfigError
from jit_core.trackers import tensorboard, wandb

#: plugin name -> module, registered by :class:`jit_core.plugins.Plugins`
BUILTIN = {"jit_core.trackers.tensorboard": tensorboard, "jit_core.trackers.wandb": wandb}
#: config switch -> (the package it imports, the pip extra that installs it)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def require(switch: str) -> None:
    """ConfigError in one line if the package behind ``log.<switch>`` cannot be imported."""
    package, extra = PACKAGES[switch]
    try:
        importlib.import_module(package)
    except ImportError as e:
        raise ConfigError(f"log.{switch}=true needs the {package} package, which is not installed: "
                          f"pip install 'jit-vco[{extra}]' (or set log.{switch}=false)") from e


def check(config: Config) -> None:
    """Every switched-on tracker's package is importable (a start-up check)."""
    for switch in PACKAGES:
        if getattr(config.log, switch):
            require(switch)
