"""Typed run configuration, resolved once.

A run's config is composed from a preset, an optional config file and ``KEY=VALUE`` overrides
(:func:`load_config`; ``jit train --preset jit-b16 optim.blr=1e-4 vco.drift_coef=5``), then resolved once
(:func:`jit_core.plugins.resolve_run` -> :func:`resolve`) into the run's frozen config: plugin options as each
plugin's typed object, the model config inside, every check passed. Checks only read. Variants of a
resolved config are derived with :func:`evolve`.

Allowed values are declared once, next to each field, with :func:`option` (``choices=``, ``ge=``, ``gt=``,
``le=``, ``lt=``) -- the core's fields and plugins' option dataclasses alike. The modules, one job each:
``fields`` (option, check_fields), ``schema`` (the dataclasses), ``presets``, ``keys`` (parsing one key),
``flat`` (the one flattener), ``files`` (composing from files), ``plugin_options``, ``checks``, ``frozen``,
``resolve``.
"""
from .checks import check_config, check_device, check_values
from .fields import ConfigError, allowed, check_fields, option, suggest
from .files import load_config, read_config_file
from .flat import flatten
from .frozen import FrozenConfigError, freeze
from .keys import all_keys, coerce, option_namespace, parse_override, set_key
from .plugin_options import given_options, plugin_options, typed_plugin_options
from .presets import PRESETS, get_preset, register_preset
from .resolve import evolve, resolve, unresolved
from .schema import (
    ATTENTION_PATHS,
    DATASET_NAMES,
    SAMPLE_METHODS,
    Config,
    DataConfig,
    DiffusionConfig,
    LogConfig,
    OptimConfig,
    SampleConfig,
    TrainConfig,
)

_suggest = suggest          # the name other modules imported before the package split

__all__ = ["ATTENTION_PATHS", "DATASET_NAMES", "PRESETS", "SAMPLE_METHODS", "Config", "ConfigError", "DataConfig",
           "DiffusionConfig", "FrozenConfigError", "LogConfig", "OptimConfig", "SampleConfig", "TrainConfig",
           "all_keys", "allowed", "check_config", "check_device", "check_fields", "check_values", "coerce", "evolve",
           "flatten", "freeze", "get_preset", "given_options", "load_config", "option", "option_namespace",
           "parse_override", "plugin_options", "read_config_file", "register_preset", "resolve", "set_key",
           "suggest", "typed_plugin_options", "unresolved"]
