"""Setting one dotted key from text or JSON: the parser shared by the command line, config files and sweeps.

Every value goes through :func:`coerce` to its field's declared type, so ``optim.blr=1e-4`` and a file's
``blr = 1e-4`` give the same float, and a bad value fails naming its key.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Optional

from .fields import ConfigError, suggest


def _finite(value: Any) -> bool:
    """False only for a value that reads as an infinite or NaN float (other bad values fail their own way)."""
    try:
        return math.isfinite(float(value))
    except (ValueError, TypeError, OverflowError):
        return True


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Turn a CLI string (or JSON value) into the annotated type, or fail naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return coerce(key, value, next(a for a in args if a is not type(None)))
    if annotation is float and not _finite(value):   # inf / nan: no setting means that (cfg=inf: blank images)
        raise ConfigError(f"bad value {value!r} for {key}: expected a finite number")
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if annotation in (int, float, str):
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            if annotation is int and isinstance(value, str):   # "1e3" is a whole number too
                return int(float(value)) if float(value).is_integer() else int(value)
            return annotation(value)
        if origin in (tuple, list):
            items = value if isinstance(value, (list, tuple)) else [v for v in str(value).strip("[]()").split(",") if v.strip()]
            inner = args[0] if args else str
            out = [coerce(key, v.strip() if isinstance(v, str) else v, inner) for v in items]
            if origin is tuple and len(args) == 2 and args[1] is not Ellipsis and len(out) != 2:
                raise ValueError
            return tuple(out) if origin is tuple else out
        if origin is dict or annotation is dict:
            return dict(value) if isinstance(value, dict) else json.loads(value)
    except ConfigError:     # an element of a list or tuple, already named
        raise
    except (ValueError, TypeError, json.JSONDecodeError):
        pass
    else:
        return value
    name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"bad value {value!r} for {key}: expected {name}")


def all_keys(cfg: Any) -> list[str]:
    """Every core key of ``cfg`` (``optim.blr``, ``model``, ...): the candidates of "did you mean"."""
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
        else:
            keys.append(f.name)
    return keys


def option_namespace(key: str, plugins: typing.Iterable[str]) -> Optional[str]:
    """The plugin (of ``plugins``, the names they are enabled by) that owns the dotted option ``key``.

    ``vco.encoder`` -> ``vco``; a plugin enabled by module path owns its path as a prefix
    (``my_pkg.my_plugin.w`` -> ``my_pkg.my_plugin``); the longest match wins; None if no plugin owns it.
    A plugin's options live under the name it is enabled by, so this needs no plugin to be imported
    (``jit slurm`` uses it to keep each sweep element's options).
    """
    return max((p for p in plugins if key.startswith(p + ".")), key=len, default=None)


def set_key(cfg: Any, key: str, value: Any, plugin_schemas: Optional[dict] = None) -> None:
    """Set a dotted key (``optim.blr``) or a plugin option (``vco.drift_coef``) on an unresolved ``cfg``.

    A plugin option is kept as given until the config is resolved (the plugin, which types it, may not be
    loaded yet), unless ``plugin_schemas`` (``{plugin: options dataclass}``) types it here; an option whose
    plugin already holds its typed options object is typed by that object's class.
    """
    hints = typing.get_type_hints(type(cfg))
    head, _, rest = key.partition(".")
    if head in hints and dataclasses.is_dataclass(getattr(cfg, head)) and rest:
        section = getattr(cfg, head)
        shints = typing.get_type_hints(type(section))
        if rest not in shints:
            raise ConfigError(f"unknown config key {key!r}{suggest(key, all_keys(cfg))}")
        setattr(section, rest, coerce(key, value, shints[rest]))
    elif head in hints and not rest:
        if dataclasses.is_dataclass(getattr(cfg, head)):
            raise ConfigError(f"{key} is a section, not a value: give its keys ({key}.KEY=VALUE, or a table in a file)")
        if head == "plugins":
            value = [] if value in ("none", "", None, []) else value
        setattr(cfg, head, coerce(key, value, hints[head]))
    elif rest and head not in hints:
        _set_plugin_option(cfg, key, value, plugin_schemas or {})
    else:
        raise ConfigError(f"unknown config key {key!r}{suggest(key, all_keys(cfg))}")


def _set_plugin_option(cfg: Any, key: str, value: Any, schemas: dict) -> None:
    # a plugin enabled by module path has a dotted namespace, so the longest matching plugin name wins
    owner = option_namespace(key, set(schemas) | set(cfg.plugin_options))
    head, rest = (owner, key[len(owner) + 1:]) if owner else key.split(".", 1)
    current: Any = cfg.plugin_options.get(head)
    schema: Any = schemas.get(head) or (type(current) if dataclasses.is_dataclass(current) else None)
    if schema is not None:
        fields = [f.name for f in dataclasses.fields(schema)]
        if rest not in fields:
            raise ConfigError(f"unknown option {key!r} of plugin {head!r}{suggest(rest, fields)}; "
                              f"options: {', '.join(fields)}")
        value = coerce(key, value, typing.get_type_hints(schema)[rest])
    if schema is not None and isinstance(current, schema):   # typed options (an evolved resolved config): a new object
        cfg.plugin_options[head] = dataclasses.replace(current, **{rest: value})
    else:
        cfg.plugin_options.setdefault(head, {})[rest] = value


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. optim.blr=1e-4)")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()
