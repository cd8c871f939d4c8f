"""Class-balanced batch sampler (spec §6)."""
from __future__ import annotations

import numpy as np
import pytest

from vco_plugin.batches import ClassBalancedBatchSampler

TARGETS = np.repeat(np.arange(10), 50)          # 500 samples, 10 classes of 50
rng = np.random.default_rng(0)
rng.shuffle(TARGETS)


def _batches(**kw):
    args = {"targets": TARGETS, "classes_per_batch": 1, "samples_per_class": 8, "rank": 0, "world_size": 2, "seed": 3}
    args.update(kw)
    s = ClassBalancedBatchSampler(**args)
    return s, list(s)


def test_single_class_batches_without_replacement():
    s, batches = _batches()
    assert len(s) == len(batches) == 500 // (1 * 8 * 2)
    for b in batches:
        assert len(b) == 8 and len(set(b)) == 8
        assert len(set(TARGETS[b].tolist())) == 1


def test_several_classes_per_batch():
    s, batches = _batches(classes_per_batch=3, samples_per_class=4, world_size=1)
    assert len(s) == 500 // 12
    for b in batches:
        labels = TARGETS[b]
        assert len(b) == 12 and len(set(b)) == 12
        assert sorted(np.unique(labels, return_counts=True)[1].tolist()) == [4, 4, 4]


def test_deterministic_per_seed_epoch_rank_and_different_otherwise():
    _, a = _batches()
    _, b = _batches()
    assert a == b
    s, _ = _batches()
    s.set_epoch(1)
    assert list(s) != a
    s.set_epoch(0)
    assert list(s) == a
    assert _batches(rank=1)[1] != a
    assert _batches(seed=4)[1] != a
    # seed + epoch * world + rank: (seed 3, epoch 1, rank 0) replays (seed 5, epoch 0, rank 0)
    s1, _ = _batches(seed=3)
    s1.set_epoch(1)
    assert list(s1) == _batches(seed=5)[1]


def test_small_class_draws_with_replacement():
    targets = [0] * 3 + [1] * 40
    s = ClassBalancedBatchSampler(targets, 1, 8, rank=0, world_size=1, seed=0)
    batches = list(s)
    assert len(batches) == 43 // 8
    for b in batches:
        assert len(b) == 8 and len({targets[i] for i in b}) == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="only 10 classes"):
        ClassBalancedBatchSampler(TARGETS, 11, 2)
    with pytest.raises(ValueError, match="rank"):
        ClassBalancedBatchSampler(TARGETS, 1, 2, rank=2, world_size=2)
