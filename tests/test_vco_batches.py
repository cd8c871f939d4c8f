"""Class-balanced batches (docs/official-code.md#batches): the recipe's groups per global step, placed on any number of ranks."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from vco_plugin.batches import GroupedClassBatchSampler, group_size, local_group_ids

TARGETS = np.repeat(np.arange(10), 50)          # 500 samples, 10 classes of 50
np.random.default_rng(0).shuffle(TARGETS)


def _batches(world=1, **kw):
    """Each rank's batches of an epoch, as a list over ranks."""
    args = {"groups_per_step": 4, "batch_size": 16, "seed": 3}
    args.update(kw)
    return [list(GroupedClassBatchSampler(TARGETS, rank=r, world_size=world, **args)) for r in range(world)]


def _global_steps(per_rank):
    """The global steps (concatenation of the ranks' batches of each step)."""
    return [sum(batches, []) for batches in zip(*per_rank)]


def test_one_group_per_step_holds_one_class():
    (batches,) = _batches(groups_per_step=1)
    assert len(batches) == 500 // 16
    for b in batches:
        assert len(b) == 16 and len(set(b)) == 16 and len(set(TARGETS[b].tolist())) == 1


def test_groups_are_contiguous_runs_of_one_class_each():
    (batches,) = _batches(groups_per_step=4)        # 4 groups of 4
    for b in batches:
        labels = TARGETS[b].reshape(4, 4)
        assert (labels == labels[:, :1]).all()
        assert all(len(set(row)) == 4 for row in np.asarray(b).reshape(4, 4).tolist())   # no repeat in a group


@pytest.mark.parametrize("world", [1, 2, 16])
def test_placement_on_any_world_size_gives_the_same_global_steps(world):
    """1 process with the global batch, 2 or 16 ranks with their share: the same global steps, so one process
    reproduces the classes per step of 16 ranks exactly (here 16 groups of 4 in a global batch of 64)."""
    reference = _global_steps(_batches(1, groups_per_step=16, batch_size=64))
    per_rank = _batches(world, groups_per_step=16, batch_size=64 // world)
    assert _global_steps(per_rank) == reference
    assert all(len(b) == 64 // world for batches in per_rank for b in batches)
    ids = local_group_ids(64 // world, 16, world)
    for batches in per_rank:                      # the loss's local groups are exactly the sampler's groups
        for b in batches:
            labels = torch.as_tensor(TARGETS[b])
            for g in ids.unique():
                assert len(labels[ids == g].unique()) == 1


def test_classes_per_step_follow_the_paper_distribution():
    """Each group's class is an independent uniform draw (the paper's ranks draw on their own): the mean number of
    distinct classes in a step of 8 groups over 10 classes is 10 (1 - 0.9^8) = 5.70."""
    targets = np.repeat(np.arange(10), 2000)
    sampler = GroupedClassBatchSampler(targets, 8, 64, seed=0)
    distinct = [len(set(targets[b].tolist())) for b in sampler]
    assert len(distinct) == 20000 // 64
    assert abs(np.mean(distinct) - 10 * (1 - 0.9 ** 8)) < 0.15


def test_a_group_spans_ranks_when_there_are_more_ranks_than_groups():
    per_rank = _batches(4, groups_per_step=2, batch_size=8)      # groups of 16 over ranks of 8
    for r0, r1, r2, r3 in zip(*per_rank):
        assert len(set(TARGETS[r0 + r1].tolist())) == 1 and len(set(TARGETS[r2 + r3].tolist())) == 1
    assert local_group_ids(8, 2, 4).tolist() == [0] * 8


def test_deterministic_per_seed_and_epoch():
    s = GroupedClassBatchSampler(TARGETS, 4, 16, seed=3)
    a = list(s)
    assert list(GroupedClassBatchSampler(TARGETS, 4, 16, seed=3)) == a
    s.set_epoch(1)
    b = list(s)
    assert b != a
    s.set_epoch(0)
    assert list(s) == a
    assert list(GroupedClassBatchSampler(TARGETS, 4, 16, seed=4)) != a
    s4 = GroupedClassBatchSampler(TARGETS, 4, 16, seed=4)
    assert list(s4) != b                          # (seed 3, epoch 1) is not (seed 4, epoch 0)


def test_small_class_draws_with_replacement():
    targets = [0] * 3 + [1] * 40
    batches = list(GroupedClassBatchSampler(targets, 1, 8, seed=0))
    assert len(batches) == 43 // 8
    assert all(len(b) == 8 and len({targets[i] for i in b}) == 1 for b in batches)


def test_bad_placements():
    with pytest.raises(ValueError, match="groups_per_step=3 does not divide the global batch 16"):
        group_size(3, 16, 1)
    with pytest.raises(ValueError, match="cannot be placed on 3 ranks"):
        group_size(2, 4, 3)
    with pytest.raises(ValueError, match="rank"):
        GroupedClassBatchSampler(TARGETS, 1, 2, rank=2, world_size=2)


def test_few_classes_per_step_warns_naming_the_option(caplog):
    with caplog.at_level(logging.WARNING):
        GroupedClassBatchSampler(TARGETS, 1, 16).warn_if_few_classes()
    assert "vco.groups_per_step=1" in caplog.text and "set vco.groups_per_step" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        GroupedClassBatchSampler(TARGETS, 8, 16).warn_if_few_classes()
        GroupedClassBatchSampler(np.repeat([0, 1], 50), 2, 16).warn_if_few_classes()   # as many as the data has
    assert caplog.text == ""


@pytest.mark.parametrize("world", [1, 2, 4])
def test_a_ranks_classes_are_drawn_without_replacement(world):
    """``classes_per_rank=4`` (the released sampler's N_c): a step of 16 groups is 4 of the recipe's ranks, each
    with 4 distinct classes, drawn independently of the other ranks; 1 or 2 processes emulating the 4 ranks draw
    exactly the steps 4 ranks draw, and on 4 ranks no rank's batch repeats a class."""
    targets = np.repeat(np.arange(10), 400)
    kw = {"groups_per_step": 16, "seed": 5, "classes_per_rank": 4}
    reference = list(GroupedClassBatchSampler(targets, batch_size=64, **kw))
    per_rank = [list(GroupedClassBatchSampler(targets, batch_size=64 // world, rank=r, world_size=world, **kw))
                for r in range(world)]
    assert _global_steps(per_rank) == reference
    shared = 0
    for step in reference:
        classes = targets[step].reshape(4, 4, 4)[:, :, 0]     # (recipe rank, group, first image) -> its class
        assert all(len(set(rank.tolist())) == 4 for rank in classes), classes   # no repeat within a rank
        shared += len(set(classes[0].tolist()) & set(classes[1].tolist())) > 0
    # ranks draw independently: two ranks share a class with probability 1 - C(6,4)/C(10,4) = 0.929
    assert abs(shared / len(reference) - (1 - 15 / 210)) < 0.08
    if world == 4:
        assert all(len(set(targets[b].tolist())) == 4 for batches in per_rank for b in batches)
    counts = np.bincount(targets[np.concatenate(reference)], minlength=10) / (len(reference) * 64)
    assert np.abs(counts - 0.1).max() < 0.03                # every class equally likely


def test_classes_per_rank_must_fit_the_step_and_the_data():
    with pytest.raises(ValueError, match="groups_per_step=6 is not a multiple of vco.classes_per_rank=4"):
        GroupedClassBatchSampler(TARGETS, 6, 12, classes_per_rank=4)
    with pytest.raises(ValueError, match="classes_per_rank=11 distinct classes cannot be drawn from 10 classes"):
        GroupedClassBatchSampler(TARGETS, 11, 11, classes_per_rank=11)
