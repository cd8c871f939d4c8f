"""Shared test fixtures (keep small).

- ``official_checkpoint``: an official-layout ``checkpoint-last.pth`` rebuilt from the in-repository copy of
  the official parity fixtures (``tests/fixtures/official``, read through ``tests/official_fixtures.py``).
- ``full_fixtures_dir``: the full official fixture folders the compact copy was cut from, or None. They are
  optional (nothing needs them): looked for in a ``shared/fixtures`` folder beside the repository checkout,
  or where ``JIT_FIXTURES`` says; when present, the compaction script is checked against them.
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

# the full fixtures, when a checkout has them: "shared/fixtures" in the folder that holds the repository
FULL_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def full_fixtures_dir() -> Path | None:
    """The full official fixture folders (``JIT_FIXTURES`` overrides where they are looked for), or None."""
    from .official_fixtures import FULL_FIXTURE_NAMES
    path = Path(os.environ.get("JIT_FIXTURES") or FULL_FIXTURES)
    return path if all((path / name).is_dir() for name in FULL_FIXTURE_NAMES) else None


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory):
    """``official_checkpoint("jit_tiny" | "vco_tiny")``: the official checkpoint file of that fixture (rebuilt once)."""
    from .official_fixtures import compact
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = compact(name).write_checkpoint(tmp_path_factory.mktemp(name) / "checkpoint-last.pth")
        return made[name]
    return get


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
