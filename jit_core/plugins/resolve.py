"""A run's one resolve step: the composed config + its plugins -> the frozen run config, and the plugins' run objects.

``config, plugins = resolve_run(build_config(...))`` is what ``jit train``, ``--dry-run``, ``jit study``,
``jit slurm submit`` and ``load_run`` do, so every one of them sees the run exactly as the trainer does: the
enabled plugins loaded, each plugin's options as its typed object (defaults filled in), the core's checks
passed, ``model_overrides`` naming the data's channels and classes and the ``ModelConfig`` inside
(``config.model_config``). Nothing here changes the config it is given.
"""
from __future__ import annotations

from typing import Any, Optional

from jit_core import trackers
from jit_core.config import Config, ConfigError, check_config, resolve
from jit_core.plugins.manager import Plugins


def data_model_overrides(config: Config, read_data: bool = True) -> dict[str, int]:
    """The model's ``in_channels`` and ``num_classes`` from the data config, without loading images (a folder
    data set's classes are its subfolders, counted only if ``read_data``); keys ``model_overrides`` sets win."""
    from jit_core.data import dataset_channels, dataset_num_classes
    given = config.model_overrides
    out = {}
    if "in_channels" not in given:
        out["in_channels"] = dataset_channels(config.data)
    if "num_classes" not in given and (read_data or config.data.name not in ("folder", "imagenet")):
        out["num_classes"] = dataset_num_classes(config.data)
    return out


def model_config_for(config: Config, data_overrides: dict[str, int]) -> Any:
    """The run's ``ModelConfig``: the named config with ``model_overrides`` (then the data's), checked against
    ``data.image_size``; ConfigError naming the fix."""
    from jit_core.model import get_model_config
    overrides = {**data_overrides, **config.model_overrides}
    try:
        mc = get_model_config(config.model, **overrides)
    except (ValueError, TypeError) as e:  # ModelConfig.validate / an unknown field in model_overrides
        raise ConfigError(f"model {config.model} with model_overrides={dict(config.model_overrides)}: {e}") from e
    if mc.image_size != config.data.image_size:
        raise ConfigError(f"data.image_size={config.data.image_size} but model {config.model} takes "
                          f"{mc.image_size} px images: set data.image_size={mc.image_size} or "
                          f"model_overrides={{\"image_size\": {config.data.image_size}}}")
    return mc


def resolve_run(config: Config, extra_plugins=(), *, plugins: Optional[Plugins] = None,
                read_data: bool = True, device_here: bool = True) -> tuple[Config, Plugins]:
    """``(resolved config, plugins)`` for the composed ``config`` (or an already resolved one: it resolves again).

    Start-up steps 1 and 2 (plugins load, their options and the core's values check, trackers' packages), then
    the model config (a folder data set's classes counted in it unless ``read_data=False``: a submitting
    machine need not see the data, a saved config names its classes), then every plugin's per-run object
    (``jit_run_plugin``) for the resolved config.
    ``device_here=False`` skips the check that ``train.device`` exists on this machine (a saved run trained
    elsewhere, a job for another node).
    """
    plugins = plugins or Plugins(config.plugins, extra=extra_plugins)
    schemas = plugins.option_schemas()
    resolved = resolve(config, schemas)
    if device_here:
        check_config(resolved)
    trackers.check(resolved)
    overrides = data_model_overrides(resolved, read_data)
    resolved = resolve(config, schemas, model_config=model_config_for(resolved, overrides), model_overrides=overrides)
    plugins.start_run(resolved)       # each plugin's per-run object, made once for this config
    return resolved, plugins
