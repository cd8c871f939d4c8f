"""One resolve step: a composed config -> the run's frozen config; and :func:`evolve`, a variant of one.

``resolve`` is pure: it reads the given config and returns a new one, in which every plugin's options are its
typed options object (defaults filled in), ``model_overrides`` names the data's channels and classes, the
network's ``ModelConfig`` is attached (``config.model_config``), and nothing can change any more. The plugins
and the model are outside this package (the config is imported by both): :func:`jit_core.plugins.resolve_run`
loads the plugins and builds the model config, then calls this.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from .checks import check_values
from .fields import ConfigError
from .frozen import freeze, thaw
from .keys import set_key
from .plugin_options import check_plugin_options, typed_plugin_options
from .schema import Config

#: Keys a resolved config cannot change in place: they change the network (its model config) or the set of
#: plugins (their typed options and run objects), so a variant that changes them must be resolved again.
NEEDS_RESOLVE = ("model", "model_overrides", "plugins", "data.")


def resolve(cfg: Config, schemas: dict[str, type], *, model_config: Any = None,
            model_overrides: Optional[dict] = None) -> Config:
    """A new, read-only config: ``cfg`` with the plugins' typed options (``schemas``: ``{plugin: dataclass}``),
    ``model_overrides`` completed (given keys win), ``model_config`` attached; ``cfg`` itself is not changed.

    Fails with :class:`ConfigError` naming the key if an option or a value is bad (every check only reads).
    """
    typed = typed_plugin_options(cfg, schemas)
    out = thaw(cfg)                     # a plain copy: nothing below reaches the caller's object
    out.plugin_options = typed
    out.model_overrides = {**(model_overrides or {}), **out.model_overrides}
    check_values(out)
    object.__setattr__(out, "_model_config", model_config)
    freeze(out)
    check_plugin_options(out)           # a plugin's cross-option check sees the config as its run will
    return out


def evolve(cfg: Config, changes: Optional[dict[str, Any]] = None, **top: Any) -> Config:
    """A copy of ``cfg`` with dotted keys changed (``evolve(cfg, {"train.max_steps": 3}, run_dir=None)``).

    Values are parsed as overrides are (``"3"`` and ``3`` alike). A resolved ``cfg`` gives a resolved copy,
    checked again; a change of the network or the plugins (:data:`NEEDS_RESOLVE`) needs a new resolve and is
    refused there. An unresolved ``cfg`` gives an unresolved copy. ``cfg`` is never changed.
    """
    changes = {**(changes or {}), **top}
    if cfg.resolved:
        refused = [k for k in changes if k in NEEDS_RESOLVE or k.startswith(NEEDS_RESOLVE[-1])]
        if refused:
            raise ConfigError(f"evolve({', '.join(refused)}): a resolved config's network and plugins cannot change; "
                              "evolve the config before resolving it, or resolve the variant again")
    out = thaw(cfg)
    for key, value in changes.items():
        set_key(out, key, value)
    if not cfg.resolved:
        return out
    check_values(out)
    object.__setattr__(out, "_model_config", cfg.__dict__.get("_model_config"))
    freeze(out)
    check_plugin_options(out)
    return out


def unresolved(cfg: Config) -> Config:
    """A mutable copy of ``cfg`` with its plugin options as plain values again (to compose a new run from)."""
    out = thaw(cfg)
    out.plugin_options = {p: {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
                          if dataclasses.is_dataclass(o) else dict(o) for p, o in out.plugin_options.items()}
    return out
