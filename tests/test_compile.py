"""Compile that stays compiled, and no host-device syncs in the model's training step or in sampling.

The model is the tiny two-stream network of a V-Co-like run: JiT-T/4 plus the ``edges`` token stream of
the test plugin ``tests.edgeco_plugin``, whose null branch blocks pixel -> edges for dropped samples
through the core's merged unconditional branch (no vco_plugin needed).
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch._dynamo
from torch._dynamo import lookup_backend

from jit_core.diffusion import sample, training_losses
from jit_core.model import StreamGroups
from jit_core.model.compile import RECOMPILE_LIMIT, compile_model
from jit_core.testing import tiny_model

EDGES = "tests.edgeco_plugin"

pytestmark = pytest.mark.usefixtures("one_thread")


def edges_model(attention: str):
    # label drop 0.3: a varying number of dropped rows in every batch
    tm = tiny_model([EDGES], attention=attention, diffusion__label_drop_prob=0.3)
    assert [s.name for s in tm.model.streams] == ["pixel", "edges"]
    return tm


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches emptied before and after; a run past the recompile limit raises instead of going eager."""
    torch._dynamo.reset()
    old = torch._dynamo.config.fail_on_recompile_limit_hit
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    yield
    torch._dynamo.config.fail_on_recompile_limit_hit = old
    torch._dynamo.reset()


def counting_backend(name: str, graphs: Counter):
    """A torch.compile backend that counts the graphs it compiles, then compiles them with ``name``."""
    def backend(gm, example_inputs):
        graphs["all"] += 1
        return lookup_backend(name)(gm, example_inputs)
    return backend


def train_and_sample(attention: str, backend: str, steps: int = 50):
    """Graphs compiled after 3 training steps, after ``steps``, and after two guided sampling calls."""
    tm = edges_model(attention)
    model, hook, config = tm.model, tm.plugins.hook, tm.config
    graphs = Counter()
    compile_model(model, backend=counting_backend(backend, graphs))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    counts = {}
    dropped_rows = set()
    for step in range(steps):
        images = torch.rand(8, 1, 32, 32, generator=g) * 2 - 1
        labels = torch.randint(0, 10, (8,), generator=g)
        drop = torch.rand(8, generator=g) < 0.3
        dropped_rows.add(int(drop.sum()))
        loss, _ = training_losses(model, model.streams, images, labels, config, hook, drop=drop)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 2:
            counts["step 3"] = graphs["all"]
    counts["training"] = graphs["all"]
    model.eval()
    for n in (4, 3):         # the doubled CFG batch (8, as in training, then 6) and both mask forms
        sample(model, torch.arange(n), hook=hook, config=config, steps=4, cfg=2.0, interval=(0.3, 1.0))
    counts["sampling"] = graphs["all"]
    assert len(dropped_rows) >= 4, dropped_rows   # the batches really vary the number of dropped rows
    return counts


# Graphs, measured: 4 in training (the block before / after the in-context tokens, the two heads),
# 5 more for sampling (no grad: block without a mask, block with StreamGroups, the two heads; then
# the block once more when the batch size changes). Each extra variant is a recompilation.
TRAINING_BUDGET, TOTAL_BUDGET = 4, 10


@pytest.mark.slow
@pytest.mark.parametrize("attention,backend", [("fast", "inductor"), ("exact", "eager")])
def test_compiled_model_stays_compiled(fresh_dynamo, attention, backend):
    """50 training steps with a varying number of dropped rows, then two sampling calls: the compiled
    blocks and heads admit a small fixed set of variants, none after step 3, within the recompile limit
    (exceeding it raises). Inductor is what ``train.compile`` uses; dynamo's guards, which decide the
    recompiles, do not depend on the backend, so the exact path is counted with the cheap ``eager`` one."""
    counts = train_and_sample(attention, backend)
    assert counts["step 3"] == counts["training"] <= TRAINING_BUDGET, counts
    assert counts["sampling"] <= TOTAL_BUDGET, counts
    assert counts["sampling"] - counts["training"] >= 2, counts    # sampling runs the compiled blocks too


def test_compile_model_raises_the_recompile_limit(fresh_dynamo):
    # set and restored by hand: pytest's monkeypatch undoes a module attribute with delattr here, which makes
    # dynamo's config entry vanish for every later test of the session
    config = torch._dynamo.config
    old = config.recompile_limit
    config.recompile_limit = 8
    try:
        model = edges_model("fast").model
        compile_model(model, backend="eager")
        assert config.recompile_limit == RECOMPILE_LIMIT
    finally:
        config.recompile_limit = old
    assert all(block._compiled_call_impl is not None for block in model.blocks)
    assert all(head._compiled_call_impl is not None for head in model.heads.values())


# =========================================================================== host-device syncs
def test_no_host_reads_in_training_step_or_sampling():
    """On the meta device tensors have no values, so every host read of device data (``.item()``,
    ``bool()``, ``tolist``, ``nonzero``, data-dependent shapes, copies to the host) raises: the training
    objective with blocked streams, its backward, and a whole guided sampling call (exact attention)
    make none. The first call shows that a host read is caught."""
    tm = edges_model("exact")
    model, hook, config = tm.model.to("meta"), tm.plugins.hook, tm.config
    blocked = torch.zeros(4, 2, 2, dtype=torch.bool, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        StreamGroups(blocked)                        # grouping reads the matrix: a sync, caught here
    model.train()
    images = torch.empty(4, 1, 32, 32, device="meta")
    labels = torch.zeros(4, dtype=torch.long, device="meta")
    drop = torch.zeros(4, dtype=torch.bool, device="meta")
    loss, terms = training_losses(model, model.streams, images, labels, config, hook, drop=drop)
    loss.backward()
    assert loss.device.type == "meta" and set(terms) >= {"pixel", "edges"}
    model.eval()
    out = sample(model, labels, hook=hook, config=config, steps=3, cfg=2.0, interval=(0.0, 1.0))
    assert out.shape == (4, 1, 32, 32) and out.device.type == "meta"


def test_fast_sampler_groups_the_streams_once_per_call(monkeypatch):
    """The fast path's mask-free grouping (one host read) is built once per sampling call, not per step,
    and the result equals the exact path's."""
    built = []
    original = StreamGroups.__init__

    def spy(self, blocked):
        built.append(blocked.shape)
        original(self, blocked)

    monkeypatch.setattr(StreamGroups, "__init__", spy)
    out = {}
    for attention in ("fast", "exact"):
        tm = edges_model(attention)
        out[attention] = sample(tm.model, torch.arange(3), hook=tm.plugins.hook, config=tm.config, steps=5, cfg=2.0,
                                interval=(0.0, 1.0), generator=torch.Generator().manual_seed(0))
    assert built == [(6, 2, 2)]         # fast path only: the batched [conditional | unconditional] matrix, once
    torch.testing.assert_close(out["fast"], out["exact"], atol=1e-5, rtol=0)
