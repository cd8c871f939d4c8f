"""jit-repa-plugin: REPA-style representation alignment for jit_core (enable with ``--plugin repa``).

The hooks live in :mod:`jit_repa.plugin` (the ``repa`` entry point); the frozen encoder in
:mod:`jit_repa.encoder`.
"""
__version__ = "0.1.0"
