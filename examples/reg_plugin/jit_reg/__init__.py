"""jit-reg-plugin: REG-style representation entanglement for jit_core (enable with ``--plugin reg``).

The hooks live in :mod:`jit_reg.plugin` (the ``reg`` entry point), the global token's training-set
statistics in :mod:`jit_reg.calibration`, the study in :mod:`jit_reg.study`.
"""
__version__ = "0.1.0"
