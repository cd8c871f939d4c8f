"""Plugin options: typed by each plugin's options dataclass when the config is resolved, found by that type.

Before resolving, ``config.plugin_options`` holds what was given (``{"vco": {"drift_coef": "5"}}``: no plugin
need be imported to compose a config). :func:`typed_plugin_options` computes, without changing the config,
each enabled plugin's options object (values coerced, defaults filled in, choices and ranges checked); the
resolved config holds those objects, and :func:`plugin_options` finds one by its class, whatever name the
plugin was enabled by.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from .fields import ConfigError, check_fields, suggest
from .flat import flatten
from .keys import coerce, option_namespace


def given_options(cfg: Any) -> dict[str, Any]:
    """Every plugin option of ``cfg`` as ``{"plugin.option": value}`` (typed objects read as their fields)."""
    given = {plugin: {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
             if dataclasses.is_dataclass(opts) else opts for plugin, opts in cfg.plugin_options.items()}
    return flatten({"plugin_options": given})


def typed_plugin_options(cfg: Any, schemas: dict[str, type]) -> dict[str, Any]:
    """``{plugin: options object}`` for every plugin in ``schemas`` (``{name it is enabled by: dataclass}``).

    Types, then :func:`~.fields.option` choices and ranges. An option of a plugin that is not enabled (or has
    no options) is an error naming it. Reads ``cfg`` only; the schema's ``check(config)`` runs on the resolved
    config (:func:`~.resolve.resolve`), where it sees every option typed.
    """
    grouped: dict[str, dict[str, Any]] = {}
    for key, value in given_options(cfg).items():
        owner = option_namespace(key, schemas)
        if owner is None:
            head = key.split(".", 1)[0]
            raise ConfigError(f"option {key}: {head!r} is not an enabled plugin with options"
                              f"{suggest(head, schemas)}; enabled: {', '.join(schemas) or 'none'} "
                              f"(enable it with --plugin {head}, or drop {key})")
        grouped.setdefault(owner, {})[key[len(owner) + 1:]] = value
    typed = {}
    for plugin, schema in schemas.items():
        fields = [f.name for f in dataclasses.fields(schema)]
        hints = typing.get_type_hints(schema)
        values = {}
        for name, value in grouped.get(plugin, {}).items():
            if name not in fields:
                raise ConfigError(f"unknown option {f'{plugin}.{name}'!r} of plugin {plugin!r}{suggest(name, fields)}; "
                                  f"options: {', '.join(fields)}")
            values[name] = coerce(f"{plugin}.{name}", value, hints[name])
        opts = schema(**values)          # the schema's defaults fill in what was not given
        check_fields(opts, plugin)
        typed[plugin] = opts
    return typed


def check_plugin_options(cfg: Any) -> None:
    """Each typed options object's ``check(config)`` (checks across options and the rest of the config)."""
    for opts in cfg.plugin_options.values():
        if callable(getattr(opts, "check", None)):
            opts.check(cfg)


def plugin_options(cfg: Any, schema: type):
    """The typed options object of the plugin whose options dataclass is ``schema`` (defaults filled in).

    Found by its class in the resolved config (:func:`jit_core.plugins.resolve_run`: the trainer,
    ``load_run`` and ``jit train --dry-run`` resolve), so the name the plugin was enabled by does not matter.
    """
    if isinstance(schema, str):
        raise TypeError(f"plugin_options(config, {schema!r}, ...): pass the options dataclass only, "
                        "plugin_options(config, MyOptions); the namespace is the name the plugin was enabled by")
    for opts in cfg.plugin_options.values():
        if type(opts) is schema:
            return opts
    state = "" if getattr(cfg, "resolved", False) else "; resolve the config first (jit_core.plugins.resolve_run)"
    raise ConfigError(f"{schema.__name__} are not the options of a plugin enabled in this config "
                      f"(plugins: {', '.join(cfg.plugins) or 'none'}){state}")
