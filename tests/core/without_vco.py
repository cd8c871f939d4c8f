"""Run pytest on the core's tests as on a machine where V-Co is not installed.

``python -m tests.core.without_vco [pytest args]``: ``vco_plugin`` cannot be imported (an import of it raises
``ModuleNotFoundError``, as after an uninstall) and the plugin entry points are not loaded
(``JIT_DISABLE_PLUGIN_AUTOLOAD``), so a core test that leans on V-Co, directly or through an installed entry point,
fails here. ``scripts/test.sh`` (so CI) runs ``tests/core`` this way.
"""
from __future__ import annotations

import importlib.abc
import os
import sys


class _Uninstalled(importlib.abc.MetaPathFinder):
    """Answers every import of ``vco_plugin`` (or a submodule) as a missing module."""

    def find_spec(self, name, path=None, target=None):
        if name == "vco_plugin" or name.startswith("vco_plugin."):
            raise ModuleNotFoundError(f"No module named {name!r} (vco_plugin is uninstalled for this run)", name=name)
        return None


def main(argv: list[str]) -> int:
    os.environ["JIT_DISABLE_PLUGIN_AUTOLOAD"] = "1"   # subprocesses (jit train ...) inherit it
    sys.meta_path.insert(0, _Uninstalled())
    import pytest
    return pytest.main(argv or ["tests/core"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
