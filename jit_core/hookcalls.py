"""How the core calls a hook: the one dispatch path and the one error wrapper (see :mod:`jit_core.hookspecs`).

:func:`call` reads the hook's calling rule from its spec and dispatches:

- *every plugin* (``EACH``): ``[(plugin, result), ...]`` of every implementation, in registration order
  (``--plugin`` order), None results dropped (:func:`call_each`, which also takes per-plugin arguments);
- *one plugin* (``ONE``): the single answer, or None; two answers are a
  :class:`~jit_core.errors.PluginError` naming both plugins (:func:`call_one`).

``caller`` is a pluggy hook caller (``plugins.hook.jit_streams``). An exception inside an
implementation is re-raised as :class:`~jit_core.errors.PluginError` naming the plugin and the hook
(a ``ConfigError`` or ``PluginError`` passes through unchanged: its message is the plugin's). The core
never calls ``plugins.hook.<name>(...)`` directly.

A plugin's per-run object (what its ``jit_run_plugin`` returned) is registered under the plugin's name
plus :data:`RUN_SUFFIX`; :func:`plugin_name` maps it back, so answers are attributed to the plugin.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jit_core.config import ConfigError
from jit_core.errors import PluginError
from jit_core.hookspecs import ONE, rule_of

RUN_SUFFIX = "#run"                        # a per-run object is registered as "<plugin>#run"


def plugin_name(registered: str) -> str:
    """The plugin a registered name belongs to (``vco#run`` -> ``vco``)."""
    return registered[:-len(RUN_SUFFIX)] if registered.endswith(RUN_SUFFIX) else registered


def guarded(plugin: str, where: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` of ``plugin``, any exception re-raised as PluginError naming the plugin and
    ``where`` (a hook, or a stream method such as ``stream 'edges'.normalize``): the one error wrapper."""
    try:
        return fn(*args, **kwargs)
    except (PluginError, ConfigError):
        raise
    except Exception as exc:
        raise PluginError(f"plugin {plugin!r} failed in {where}: {type(exc).__name__}: {exc}") from exc


def _call(impl, hook_name: str, kwargs: dict) -> Any:
    """One implementation with the arguments it declares (a missing one names the hook's arguments)."""
    name = plugin_name(impl.plugin_name)
    missing = [arg for arg in impl.argnames if arg not in kwargs]
    if missing:
        raise PluginError(f"plugin {name!r} implements {hook_name} with unknown arguments {missing}; the hook "
                          f"passes {sorted(kwargs)}")
    return guarded(name, f"hook {hook_name}", impl.function, *[kwargs[arg] for arg in impl.argnames])


def call(caller, **kwargs) -> Any:
    """Call a hook by the rule declared on its spec: a list of ``(plugin, answer)`` or the one answer."""
    return call_one(caller, **kwargs) if rule_of(caller.name) == ONE else call_each(caller, **kwargs)


def call_each(caller, per_plugin: Callable[[str], dict] | None = None, only: Callable[[str], bool] | None = None,
              **kwargs) -> list[tuple[str, Any]]:
    """``(plugin name, result)`` of every plugin's implementation in registration order; None results left
    out. ``per_plugin(name)``: extra keyword arguments for that plugin's call (its own generator);
    ``only(name)``: False skips that plugin."""
    out = []
    for impl in caller.get_hookimpls():   # pluggy keeps registration order (tryfirst ones last)
        name = plugin_name(impl.plugin_name)
        if only is not None and not only(name):
            continue
        call_kwargs = {**kwargs, **per_plugin(name)} if per_plugin else kwargs
        result = _call(impl, caller.name, call_kwargs)
        if result is not None:
            out.append((name, result))
    return out


def call_one(caller, **kwargs) -> Any:
    """A *one plugin* hook: the only non-None answer, or None; two answers fail naming both plugins."""
    answers = call_each(caller, **kwargs)
    if len(answers) > 1:
        names = " and ".join(repr(name) for name, _ in answers)
        raise PluginError(f"plugins {names} both answer {caller.name}; only one enabled plugin may (enable one of "
                          "them, or switch that behaviour off in one of them)")
    return answers[0][1] if answers else None
