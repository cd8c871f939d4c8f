"""Plugin API v2, step 3: a stream's own drop (drawn by the core from its plugin's generator, independent of the
label drop), hooks that know training from sampling, the per-step plugin generator, and the one-line checks of
jit_core.testing. A neutral test plugin (tests/core/lowpass_plugin.py), never V-Co."""
from __future__ import annotations

import pytest
import torch

from jit_core.rng import plugin_generator, plugin_seed
from jit_core.testing import check_off_equals_baseline, check_resumes_bit_identically, tiny_setup

PLUGIN = "tests.core.lowpass_plugin"


def test_own_drop_is_independent_of_the_label_drop_and_applied_to_its_own_branch(tmp_path):
    setup = tiny_setup(plugins=[PLUGIN], batch_size=64, run_dir=tmp_path, **{"diffusion.label_drop_prob": 0.0,
                                                                              f"{PLUGIN}.drop": 0.5})
    run = setup.plugins.runs[PLUGIN]
    assert run.set_up
    torch.manual_seed(0)
    _, losses = setup.step()
    (own,) = run.drops_seen
    assert 10 < int(own.sum()) < 54                                    # its own drop, with no label drop at all
    expected = plugin_generator(setup.config.train.seed, 0, PLUGIN, 0, "drop/lowpass")
    assert torch.equal(own, torch.rand(64, generator=expected) < 0.5)  # drawn by the core from its generator
    torch.manual_seed(0)
    setup.step()
    assert torch.equal(run.drops_seen[1], own)                         # a function of (seed, step, plugin, rank)
    assert {"pixel", "lowpass", "jitter"} <= set(losses)
    lowpass = setup.model.streams[1]                                   # a coarse grid of its own: 4x4 beside 8x8
    assert (lowpass.grid, setup.model.token_count(lowpass), setup.model.cfg.grid) == (4, 16, 8)


def test_sampling_drops_every_sample_of_the_own_branch(tmp_path):
    from jit_core.diffusion import sample
    setup = tiny_setup(plugins=[PLUGIN], run_dir=tmp_path)
    run = setup.plugins.runs[PLUGIN]
    sample(setup.model.eval(), torch.arange(3), hook=setup.plugins.hook, config=setup.config, steps=2, cfg=2.0,
           generator=torch.Generator().manual_seed(0))
    assert run.drops_seen[-1].all() and run.drops_seen[-1].shape == (3,)


def test_plugin_seeds_differ_by_step_plugin_rank_and_purpose():
    seeds = {plugin_seed(0, s, p, r, q) for s in (0, 1) for p in ("a", "b") for r in (0, 1) for q in ("step", "drop")}
    assert len(seeds) == 16 and plugin_seed(0, 1, "a") == plugin_seed(0, 1, "a")


@pytest.mark.slow
def test_the_plugin_resumes_bit_identically(tmp_path):
    check_resumes_bit_identically(tmp_path, plugins=[PLUGIN], steps=4)


def test_switched_off_it_is_the_baseline_and_the_check_catches_a_difference(tmp_path):
    """Own drop 0 and no jitter still add a stream (other weights): the check compares pixel losses and says so."""
    with pytest.raises(AssertionError, match="plugin switched off vs baseline"):
        check_off_equals_baseline(tmp_path, plugins=[PLUGIN], off={f"{PLUGIN}.jitter": 0.0}, steps=2)
