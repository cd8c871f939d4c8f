"""The plugin machinery: the manager (``manager.py``: entry points, enable by name, validation, per-run objects)
and the helpers behind ``jit_core.testing`` (``recording.py``: a plugin that records hook calls; ``hookref.py``:
the hook reference in docs). JiT's own behaviour is the core's (``jit_core.Stream``'s defaults), not a plugin."""
from jit_core.plugins.manager import (
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    PluginError,
    PluginInfo,
    Plugins,
    check_run_plugins,
    describe_all,
    installed_module_names,
    installed_plugins,
)
from jit_core.plugins.resolve import resolve_run

__all__ = ["DISABLE_ENV", "ENTRY_POINT_GROUP", "PluginError", "PluginInfo", "Plugins", "check_run_plugins",
           "describe_all", "installed_module_names", "installed_plugins", "resolve_run"]
