"""Run folders on disk: crash-safe checkpoints (``checkpoint.py``), loading a run (``loading.py``) and
``jit convert`` (``convert.py``: an official checkpoint into a run folder)."""
