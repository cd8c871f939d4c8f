"""Shared test fixtures (keep small).

- ``fixtures_dir``: the shared parity fixtures produced by the official code (``../shared/fixtures``
  next to the repository, overridable with ``JIT_FIXTURES``); tests that need it skip when absent.
- ``one_thread``: tiny models on one intra-op thread.
- ``vco``: the V-Co plugin enabled, with its presets registered.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never reach the Hugging Face Hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The plugin authors' fixtures (jit_train, jit_one_step, jit_recorder, ...): loaded where asked, not by an
# entry point, so pytest runs elsewhere in the environment do not import torch.
pytest_plugins = ["jit_core.testing"]

DEFAULT_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Folder of the official parity fixtures (``JIT_FIXTURES`` overrides the default location)."""
    path = Path(os.environ.get("JIT_FIXTURES") or DEFAULT_FIXTURES)
    if not path.is_dir():
        pytest.skip(f"shared parity fixtures not found at {path} (set JIT_FIXTURES to their folder)")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one intra-op thread; two threads on a loaded 2-CPU box slow them ~10x."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vco():
    """A plugin manager with V-Co enabled; its presets (``vco-tiny``, ...) registered in jit_core.config."""
    from jit_core.config import register_preset
    from jit_core.plugins import Plugins
    pl = Plugins(enabled=["vco"])
    for presets in pl.hook.jit_presets():
        for name, factory in (presets or {}).items():
            register_preset(name, factory)
    return pl
