"""A run's config from the command line's parts: preset -> file -> overrides -> ``--plugin``."""
from __future__ import annotations

import sys

from jit_core.config import load_config, register_preset


def from_installed(hook_name: str, **kwargs) -> list:
    """Every installed plugin's answer to an install-time hook (``jit_presets``, ``jit_studies``,
    ``jit_official_layouts``, ``jit_add_commands(cli=...)``), each plugin loaded on its own: a broken plugin
    warns and is skipped, so it cannot break runs that do not use it."""
    from .manager import PluginError, Plugins, installed_plugins
    answers = []
    for name in installed_plugins():
        try:
            plugins = Plugins([name])
        except PluginError as exc:
            print(f"warning: {exc}", file=sys.stderr)
            continue
        answers += [answer for _, answer in plugins.install_answers(hook_name, **kwargs)]
    return answers


def register_plugin_presets() -> None:
    """Register the presets of every installed plugin."""
    for presets in from_installed("jit_presets"):
        for key, factory in (presets or {}).items():
            register_preset(key, factory)


def build_config(preset, config_file, plugins, overrides, run_dir=None):
    """Preset -> file -> overrides -> --plugin; plugins' presets are registered first."""
    register_plugin_presets()
    cfg = load_config(preset, config_file, overrides)
    for name in plugins:
        if name not in cfg.plugins:
            cfg.plugins.append(name)
    if run_dir:
        cfg.run_dir = str(run_dir)
    return cfg
