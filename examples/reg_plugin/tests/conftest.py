"""The REG plugin's tests use jit_core's helpers for plugin authors (fixtures jit_train, jit_one_step, ...)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest_plugins = ["jit_core.testing"]
