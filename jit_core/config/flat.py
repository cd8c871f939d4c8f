"""The one flattener: a config's dict form as dotted keys (``optim.blr``), the spelling overrides use.

Every place that compares, lists or records configs key by key (config files, ``--sweep``, study arms, the
resume check, report tables, TensorBoard's hyper-parameters) flattens through :func:`flatten`, so a key is
spelled the same everywhere.
"""
from __future__ import annotations

from typing import Any

#: Values that are one key although they are dicts: ``model_overrides={"depth": 6}`` is set whole.
WHOLE = ("model_overrides",)


def flatten(config: Any, *, plugin_prefix: str = "", without: tuple[str, ...] = ()) -> dict[str, Any]:
    """``config`` (a ``Config`` or its dict form) as ``{dotted key: value}``.

    Sections become ``section.key``; plugin options ``<plugin>.<option>`` (the command line's spelling), or
    ``plugin_options.<plugin>.<option>`` with ``plugin_prefix="plugin_options."`` (config.json's nesting);
    ``model_overrides`` stays one value; empty sections give no keys; the top-level keys in ``without``
    (e.g. ``run_dir``, which names where a run is, not what it is) are left out.
    """
    data = config.to_dict() if hasattr(config, "to_dict") else config
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in without:
            continue
        if key == "plugin_options" and isinstance(value, dict):
            # a plugin enabled by module path has dots in its name: its options are never split further
            out.update({f"{plugin_prefix}{plugin}.{k}": v for plugin, opts in value.items() for k, v in opts.items()})
        elif isinstance(value, dict) and key not in WHOLE:
            out.update(_nested(value, f"{key}."))
        else:
            out[key] = value
    return out


def _nested(section: dict, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, dict):   # deeper than a section: only a bad file has this; set_key names the key
            out.update(_nested(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
