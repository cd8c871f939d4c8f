"""Read-only configs: after :func:`jit_core.config.resolve` a config is the run, and nothing may change it.

A resolved config is shared by the trainer, the plugins' run objects and the checks; a hook that changed it
would change the run behind the others' backs (and config.json would no longer be the run that trained). So
its sections refuse attribute assignment and its lists and dicts refuse mutation, each in one line that
says how to derive a variant instead (:func:`jit_core.config.evolve`).
"""
from __future__ import annotations

from typing import Any

from .fields import ConfigError

HOW_TO_VARY = ("derive a variant with jit_core.config.evolve(config, {'section.key': value}) "
               "(or change the config before resolving it)")


class FrozenConfigError(ConfigError, AttributeError):
    """An attempt to change a resolved config."""


class Freezable:
    """Base of the config sections: assignment works until :func:`freeze` marks the object read-only."""

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise FrozenConfigError(f"{type(self).__name__}.{name}: this config is resolved and read-only; "
                                    + HOW_TO_VARY)
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if self.__dict__.get("_frozen"):
            raise FrozenConfigError(f"{type(self).__name__}.{name}: this config is resolved and read-only")
        object.__delattr__(self, name)

    @property
    def frozen(self) -> bool:
        return bool(self.__dict__.get("_frozen"))


def _refuse(self, *args, **kwargs):
    raise FrozenConfigError("this config is resolved and read-only; " + HOW_TO_VARY)


class FrozenList(list):
    """A list that refuses changes (``config.plugins`` of a resolved config); equal to the same plain list."""

    append = extend = insert = remove = pop = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse

    def __reduce__(self):       # copy and pickle rebuild it whole (not by appending)
        return type(self), (list(self),)


class FrozenDict(dict):
    """A dict that refuses changes (``model_overrides``, ``plugin_options``); equal to the same plain dict."""

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):
        return type(self), (dict(self),)


def freeze(obj: Any) -> Any:
    """Mark ``obj`` (a config section tree) read-only in place, its lists and dicts replaced by frozen ones."""
    if isinstance(obj, Freezable):
        for name, value in list(vars(obj).items()):
            object.__setattr__(obj, name, freeze(value))
        object.__setattr__(obj, "_frozen", True)
        return obj
    if isinstance(obj, dict):
        return FrozenDict({k: freeze(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return FrozenList(freeze(v) for v in obj)
    return obj


def thaw(obj: Any) -> Any:
    """A plain (mutable) copy of what :func:`freeze` produced: plain lists and dicts, sections not frozen."""
    if isinstance(obj, Freezable):
        out = object.__new__(type(obj))
        for name, value in vars(obj).items():
            if name != "_frozen":
                object.__setattr__(out, name, thaw(value))
        return out
    if isinstance(obj, dict):
        return {k: thaw(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [thaw(v) for v in obj]
    return obj
