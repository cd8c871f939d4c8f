"""jit-redi-plugin: ReDi-style joint image-feature synthesis for jit_core (enable with ``--plugin redi``).

The hooks live in :mod:`jit_redi.plugin` (the ``redi`` entry point), the PCA and its cache in
:mod:`jit_redi.pca`, the study in :mod:`jit_redi.study`.
"""
__version__ = "0.1.0"
