"""Allowed values declared next to each field: :func:`option` declares them, :func:`check_fields` enforces them.

The core's sections (:mod:`.schema`) and plugins' option dataclasses use the same two functions, so a value
outside its choices or range fails in one line naming the key, whoever declared it.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import field
from typing import Any, Optional


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the fix."""


_RANGES = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def option(default: Any, *, choices: Optional[typing.Sequence] = None, ge=None, gt=None, le=None, lt=None):
    """A dataclass field with its allowed values declared next to it (checked by :func:`check_fields`).

    ``choices``: the allowed values; ``ge``/``gt``/``le``/``lt``: bounds. A tuple or list value is
    checked element by element; None (an unset ``Optional``) is always allowed. Example:
    ``log_every: int = option(100, gt=0)``.
    """
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta = {"choices": tuple(choices) if choices is not None else None, "bounds": bounds}
    if isinstance(default, (list, dict, set)):
        # a mutable default must not be shared between instances: each gets its own copy
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def allowed(f: dataclasses.Field) -> str:
    """The allowed values of a field declared with :func:`option`, as text ("" if unconstrained)."""
    choices, bounds = f.metadata.get("choices"), f.metadata.get("bounds") or {}
    if choices is not None:
        return "one of " + ", ".join(str(c) for c in choices)
    return " and ".join(f"{_RANGES[k][0]} {b}" for k, b in bounds.items())


def check_fields(obj: Any, prefix: str) -> None:
    """Check every :func:`option` field of the dataclass ``obj`` (key ``prefix.name``); ConfigError naming the key."""
    for f in dataclasses.fields(obj):
        choices, bounds = f.metadata.get("choices"), f.metadata.get("bounds") or {}
        if choices is None and not bounds:
            continue
        value = getattr(obj, f.name)
        items = value if isinstance(value, (tuple, list)) else [value]
        for item in items:
            if item is None:
                continue
            ok = item in choices if choices is not None else \
                isinstance(item, (int, float)) and all(_RANGES[k][1](item, b) for k, b in bounds.items())
            if not ok:
                each = "each value " if isinstance(value, (tuple, list)) else ""
                shown = ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else value
                raise ConfigError(f"{prefix}.{f.name}={shown}: {each}must be {allowed(f)}")


def suggest(key: str, candidates) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``candidates``, or "" when none is close."""
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
