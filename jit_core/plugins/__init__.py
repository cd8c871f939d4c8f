"""The plugin machinery: the manager (``manager.py``: entry points, enable by name, validation), the core's
own hook implementations (``defaults.py``: JiT), and the helpers behind ``jit_core.testing``
(``recording.py``: a plugin that records hook calls; ``hookref.py``: the hook reference in docs)."""
from jit_core.plugins.manager import (
    CORE_NAME,
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

__all__ = ["CORE_NAME", "DISABLE_ENV", "ENTRY_POINT_GROUP", "PluginError", "PluginInfo", "Plugins", "check_run_plugins",
           "describe_all", "installed_module_names", "installed_plugins"]
