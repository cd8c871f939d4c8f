"""Loading a run folder: its saved config (plugins it names are untrusted), its network, its weights.

    run = load_run("runs/tiny")                 # EMA1 weights, config, plugins, eval mode
    images = generate(run, torch.arange(10), cfg=2.0)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from jit_core.clioptions import trust_options  # noqa: F401 -- re-exported: the commands' --trust-plugin
from jit_core.config import Config, ConfigError, check_values, evolve, read_config_file
from jit_core.diffusion.generate import SampleSpec, generate_images
from jit_core.hookspecs import RunContext
from jit_core.model import JiT
from jit_core.official.layout import import_official
from jit_core.plugins import Plugins, check_run_plugins, resolve_run
from jit_core.runs import checkpoint as ckpt
from jit_core.runs.compat import check_compatible
from jit_core.runs.network import build_network


@dataclass
class LoadedRun:
    run_dir: Path
    config: Config
    model: JiT
    plugins: Plugins
    step: int
    checkpoint: Path
    ema: str


def load_run_config(run_dir: str | Path, trust_plugins=()) -> Config:
    """A run folder's saved config, as saved (not resolved: a resume may still override keys). Plugins it names
    that are not installed entry points (module paths, ``.py`` files) must be in ``trust_plugins`` (or
    ``trust_plugins=True``): see :func:`jit_core.plugins.check_run_plugins`."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json); pass the folder given to jit train")
    data = read_config_file(path)
    try:     # the checks a new run's config passes (keys, types, choices, ranges), the device aside
        cfg = Config.from_dict(data)
        check_values(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}; restore the run's config.json (or fix that key)") from None
    check_run_plugins(cfg.plugins, trust_plugins, path)
    return cfg


def build_model_for(config: Config, plugins: Optional[Plugins] = None, device="cpu") -> tuple[JiT, Plugins]:
    """The (randomly initialised) network a config describes, with its plugins' streams, and the plugins set up
    to sample (``jit_setup`` with ``training=False``): :func:`jit_core.runs.network.build_network` once the
    plugins are ready.

    The config is resolved here unless it already is, for these plugins; the resolved config is
    ``plugins.run_config`` (what the plugins' run objects were made for: pass that one to their hooks)."""
    if not (config.resolved and plugins is not None and plugins.run_config is config):
        # a saved run may have trained on another machine's device and data: neither is looked for here
        config, plugins = resolve_run(config, plugins=plugins or Plugins(config.plugins), read_data=False,
                                      device_here=False)
    mc = config.model_config
    plugins.setup(RunContext(config=config, model_config=mc, device=torch.device(device),
                             run_dir=Path(config.run_dir) if config.run_dir else None))   # to sample: training False
    return build_network(config, plugins, mc, device=device), plugins


def load_run(run_dir: str | Path, ema: str = "ema1", device="cpu", checkpoint: str | os.PathLike | None = None,
             trust_plugins=()) -> LoadedRun:
    """Load a run folder's model with the chosen weights (``model``, ``ema1`` or ``ema2``), in eval mode.

    ``trust_plugins``: module-path plugins the run's config names that may be imported (see :func:`load_run_config`).
    """
    if ema not in ("model", "ema1", "ema2"):
        raise ValueError(f"unknown weights {ema!r}: use model, ema1 or ema2")
    run_dir = Path(run_dir)
    config = evolve(load_run_config(run_dir, trust_plugins), run_dir=str(run_dir))  # the folder may have moved
    model, plugins = build_model_for(config, device=device)
    config = plugins.resolved_config()      # resolved: the config the plugins' run objects were made for
    path = Path(checkpoint) if checkpoint else ckpt.latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet")
    weights, state = ckpt.load_checkpoint(path)
    check_compatible(weights[ema], model, str(path))
    model.load_state_dict(weights[ema])
    model.eval()
    return LoadedRun(run_dir, config, model, plugins, int(state.get("step", 0)), path, ema)


def generate(run: LoadedRun, labels: torch.Tensor, spec: Optional[SampleSpec] = None, *, start_index: int = 0,
             progress: bool = False, return_streams: bool = False, **settings):
    """:func:`~jit_core.diffusion.generate.generate_images` for a loaded run: uint8 ``(N, C, H, W)`` with the
    run's sampler settings unless ``spec`` or ``settings`` (fields of :class:`SampleSpec`: ``cfg=2.0, seed=1``,
    taking precedence over ``spec``) say otherwise."""
    spec = replace(spec or SampleSpec(), **settings)
    return generate_images(run.model, labels, run.config, run.plugins, spec, start_index=start_index,
                           progress=progress, return_streams=return_streams)


def load_weights(path, which: str = "ema1") -> dict[str, torch.Tensor]:
    """One state dict (model/ema1/ema2) from a checkpoint dir, a run dir (its latest checkpoint), a
    ``.safetensors`` file, or an official ``.pth`` (or a folder holding ``checkpoint-last.pth``)."""
    path = Path(path)
    if path.is_file():
        return ckpt.read_safetensors(path) if path.suffix == ".safetensors" else _pick(import_official(path), which, path)
    if path.is_dir() and (path / "checkpoint-last.pth").is_file() and not (path / "checkpoints").exists():
        return _pick(import_official(path / "checkpoint-last.pth"), which, path)
    return ckpt.read_weights(path, which)


def _pick(imported: dict, which: str, path: Path) -> dict[str, torch.Tensor]:
    if which not in ckpt.WEIGHT_NAMES:
        raise ckpt.CheckpointError(f"official checkpoint {path} has no {which!r} weights (choose from {ckpt.WEIGHT_NAMES})")
    return imported[which]
