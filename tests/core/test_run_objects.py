"""Plugin API v2, step 1: a plugin is a per-run object (made by ``jit_run_plugin``), set up at start-up under a
forked RNG. A neutral test plugin, never V-Co."""
from __future__ import annotations

import torch

from jit_core import hookimpl
from jit_core.errors import PluginError
from jit_core.testing import tiny_config, tiny_setup


class Counter:
    """A per-run object: its own state, and a set-up that draws from the global RNG (as a module's init does)."""

    def __init__(self, config):
        self.config, self.setups, self.drawn = config, [], None

    @hookimpl
    def jit_setup(self, run):
        self.setups.append((run.training, run.dry_run, run.model_config.grid))
        self.drawn = torch.rand(3)          # would shift the training randomness without the core's fence

    @hookimpl
    def jit_capture_blocks(self):
        return [1]


class CounterPlugin:
    """What an installed plugin's module is: install-time hooks only, the factory among them."""

    __name__ = "counter"

    def __init__(self):
        self.made = []

    @hookimpl
    def jit_run_plugin(self, config):
        self.made.append(Counter(config))
        return self.made[-1]


def test_each_run_gets_its_own_object_set_up_once_at_start_up(tmp_path):
    factory = CounterPlugin()
    a = tiny_setup(extra_plugins=[factory], run_dir=tmp_path)
    b = tiny_setup(extra_plugins=[factory], run_dir=tmp_path)
    assert len(factory.made) == 2 and factory.made[0] is not factory.made[1]
    assert a.plugins.runs["counter"] is factory.made[0] and b.plugins.runs["counter"] is factory.made[1]
    assert factory.made[0].setups == [(True, False, 8)] and factory.made[0].config is a.config
    assert a.capture == [1]                                       # the run object answers the per-run hooks


def test_set_up_never_shifts_the_training_randomness(tmp_path):
    """The first batch's noise draws are those of a run without the plugin: set-up ran under a forked RNG."""
    torch.manual_seed(123)
    plain = tiny_setup(run_dir=tmp_path)
    with_plugin = tiny_setup(extra_plugins=[CounterPlugin()], run_dir=tmp_path)
    torch.manual_seed(0)
    total_plain, _ = plain.step()
    torch.manual_seed(0)
    total_with, _ = with_plugin.step()
    assert torch.equal(total_plain, total_with)
    drawn = with_plugin.plugins.runs["counter"].drawn
    again = tiny_setup(extra_plugins=[CounterPlugin()], run_dir=tmp_path).plugins.runs["counter"].drawn
    assert torch.equal(drawn, again)                              # set-up itself is seeded by train.seed


def test_trainer_rng_after_start_up_does_not_depend_on_the_plugin(tmp_path):
    a = tiny_setup(run_dir=tmp_path)
    state_plain = torch.get_rng_state()
    b = tiny_setup(extra_plugins=[CounterPlugin()], run_dir=tmp_path)
    assert torch.equal(torch.get_rng_state(), state_plain) and a.trainer.step == b.trainer.step == 0


def test_a_run_object_may_not_carry_install_time_hooks():
    class Bad:
        @hookimpl
        def jit_options(self):
            return None

    class Factory:
        __name__ = "bad"

        @hookimpl
        def jit_run_plugin(self, config):
            return Bad()

    from jit_core.plugins import Plugins
    pl = Plugins(extra=[Factory()])
    try:
        pl.start_run(tiny_config())
    except PluginError as exc:
        assert "install-time hooks" in str(exc) and "'bad'" in str(exc)
    else:
        raise AssertionError("a run object with jit_options was registered")
