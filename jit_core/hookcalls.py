"""How the core calls hooks whose answers must be attributed to a plugin (see :mod:`jit_core.hookspecs`).

- :func:`call_each`: ``[(plugin, result), ...]`` of every implementation, in registration order
  (``--plugin`` order; the core's defaults are not included), None results dropped;
- :func:`call_for_stream`: a *per stream* hook answered by the plugin that added the stream, else the
  core's default;
- :func:`call_one`: a *one plugin* hook: the single answer, or None; two answers are a
  :class:`~jit_core.errors.PluginError` naming both plugins.

``caller`` is a pluggy hook caller (``plugins.hook.jit_normalize``). An exception inside an
implementation is re-raised as :class:`~jit_core.errors.PluginError` naming the plugin and the hook
(a ``ConfigError`` or ``PluginError`` passes through unchanged: its message is the plugin's).

A plugin's per-run object (what its ``jit_run_plugin`` returned) is registered under the plugin's name
plus :data:`RUN_SUFFIX`; :func:`plugin_name` maps it back, so answers are attributed to the plugin.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jit_core.config import ConfigError
from jit_core.errors import PluginError

CORE_NAME = "jit_core.plugins.defaults"   # the name the core's own implementations are registered under
RUN_SUFFIX = "#run"                        # a per-run object is registered as "<plugin>#run"


def plugin_name(registered: str) -> str:
    """The plugin a registered name belongs to (``vco#run`` -> ``vco``)."""
    return registered[:-len(RUN_SUFFIX)] if registered.endswith(RUN_SUFFIX) else registered


def _call(impl, hook_name: str, kwargs: dict) -> Any:
    name = plugin_name(impl.plugin_name)
    try:
        return impl.function(*[kwargs[arg] for arg in impl.argnames])
    except (PluginError, ConfigError):
        raise
    except KeyError as exc:
        if any(arg not in kwargs for arg in impl.argnames):
            raise PluginError(f"plugin {name!r} implements {hook_name} with unknown arguments "
                              f"{[n for n in impl.argnames if n not in kwargs]}; the hook passes {sorted(kwargs)}") from exc
        raise PluginError(f"plugin {name!r} failed in hook {hook_name}: KeyError: {exc}") from exc
    except Exception as exc:
        raise PluginError(f"plugin {name!r} failed in hook {hook_name}: {type(exc).__name__}: {exc}") from exc


def call_each(caller, per_plugin: Callable[[str], dict] | None = None, only: Callable[[str], bool] | None = None,
              **kwargs) -> list[tuple[str, Any]]:
    """``(plugin name, result)`` of every plugin's implementation in registration order; None results and
    the core's defaults left out. ``per_plugin(name)``: extra keyword arguments for that plugin's call
    (its own drop, its own generator); ``only(name)``: False skips that plugin."""
    out = []
    for impl in caller.get_hookimpls():   # pluggy keeps registration order (tryfirst ones last)
        if impl.plugin_name == CORE_NAME:
            continue
        name = plugin_name(impl.plugin_name)
        if only is not None and not only(name):
            continue
        call_kwargs = {**kwargs, **per_plugin(name)} if per_plugin else kwargs
        result = _call(impl, caller.name, call_kwargs)
        if result is not None:
            out.append((name, result))
    return out


def call_for_stream(caller, **kwargs) -> Any:
    """A *per stream* hook: the answer of the plugin that added ``kwargs["stream"]`` (``stream.plugin``),
    else (None, or a stream without an owner such as ``pixel``) the core's default."""
    owner = getattr(kwargs["stream"], "plugin", "")
    impls = caller.get_hookimpls()
    for wanted in ((owner, CORE_NAME) if owner else (CORE_NAME,)):
        for impl in impls:
            if plugin_name(impl.plugin_name) == wanted:
                result = _call(impl, caller.name, kwargs)
                if result is not None:
                    return result
    return None


def call_one(caller, **kwargs) -> Any:
    """A *one plugin* hook: the only non-None answer, or None; two answers fail naming both plugins."""
    answers = call_each(caller, **kwargs)
    if len(answers) > 1:
        names = " and ".join(repr(name) for name, _ in answers)
        raise PluginError(f"plugins {names} both answer {caller.name}; only one enabled plugin may (enable one of "
                          "them, or switch that behaviour off in one of them)")
    return answers[0][1] if answers else None
