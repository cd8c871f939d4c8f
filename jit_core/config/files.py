"""A config from its parts: a preset, then a TOML/JSON file, then ``KEY=VALUE`` overrides (later wins).

This composes; it does not resolve (no plugin is loaded): :func:`jit_core.plugins.resolve_run` turns the
result into the run's frozen config. A run folder's saved config is read by
:func:`jit_core.runs.loading.load_run_config`, which uses :func:`read_config_file` too.
"""
from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Optional

from .fields import ConfigError
from .flat import flatten
from .keys import parse_override, set_key
from .presets import get_preset
from .schema import Config

try:                 # Python >= 3.11 (mypy checks as Python 3.10, which lacks it)
    import tomllib  # type: ignore[import-not-found,unused-ignore]
except ModuleNotFoundError:   # Python 3.10: the same parser, from PyPI
    import tomli as tomllib


def load_config(preset: Optional[str] = None, file: Optional[str | Path] = None,
                overrides: typing.Sequence[str] = ()) -> Config:
    """Preset, then a TOML/JSON file, then ``KEY=VALUE`` overrides (later wins); unresolved."""
    cfg = get_preset(preset) if preset else Config()
    if file:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        for key, value in flatten(read_config_file(path)).items():
            set_key(cfg, key, value)
    for text in overrides:
        set_key(cfg, *parse_override(text))
    return cfg


def read_config_file(path: Path) -> dict:
    """The table of keys in a TOML or JSON config file (a run's ``config.json`` included); ConfigError naming the
    file and the problem (not valid, nested too deeply, not a table, a section that is not a table)."""
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        data = tomllib.loads(path.read_text()) if kind == "TOML" else json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {kind}: {exc}; fix that line") from exc
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to be a config: fix or replace it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of keys, not {type(data).__name__}")
    options = data.get("plugin_options", {})
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ConfigError(f"config file {path}: plugin_options must be a table of tables (plugin -> options)")
    return data
