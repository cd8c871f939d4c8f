"""The training loop on real (tiny) runs: the loss falls, exact resume, EMA, lr schedule, AdamW groups,
metrics.jsonl, and a 2-process DDP run (gloo on the CPU).

Runs use the ``test`` preset (JiT-T/4, exact attention, fp32, CPU). The resume and DDP runs use the
80-image folder of :mod:`tests.fault_tools` (10 steps per epoch at batch 8) so that an epoch boundary
is crossed in a few steps; the uninterrupted 20-step reference run is trained once per process.
"""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch import nn

from jit_core.config import load_config
from jit_core.runs import checkpoint as ckpt
from jit_core.training import EMA, Trainer, lr_at, param_groups

from . import fault_tools as ft


@pytest.fixture(scope="module")
def reference():
    return ft.reference_run()


# ----------------------------------------------------------------------------------- the loss falls
def test_loss_falls_on_digits(tmp_path):
    """24 steps of JiT-T/4 on sklearn digits (lr 1e-3, batch 16): the mean of the last two logged losses is
    well below the mean of the first two (typically 1.4 -> 0.25; zero-initialised heads start high)."""
    cfg = load_config("test", None, ["train.max_steps=24", "train.log_every=4", "train.ckpt_every=1000",
                                     "sample.steps=1"])
    result = ft.train_in_process(cfg, tmp_path / "digits")
    assert result.status == "finished" and result.step == 24
    losses = [m["loss"] for m in ft.read_metrics(tmp_path / "digits")]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.6 * first, f"loss did not fall: {losses}"


# ----------------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("k", [
    pytest.param(4, id="mid-epoch-then-across-the-boundary"),
    pytest.param(10, id="at-the-epoch-boundary"),
])
def test_exact_resume_in_process(reference, tmp_path, k):
    """Train k steps (train.max_steps=k), then resume the same folder to 20: model, ema1 and ema2 are
    bit-identical to the uninterrupted 20-step run (10 steps per epoch: k=4 resumes mid-epoch and then
    crosses the boundary at step 10; k=10 resumes exactly on it)."""
    run = tmp_path / "run"
    first = ft.train_in_process(ft.folder_config(k), run)
    assert (first.status, first.step) == ("finished", k)
    trainer = Trainer(ft.folder_config(ft.REF_STEPS), run, progress=False)
    assert trainer.step == k and trainer.last_checkpoint == ft.step_dir(run, k)
    with ft.single_thread():
        second = trainer.fit()
    assert (second.status, second.step) == ("finished", ft.REF_STEPS)
    assert [m["step"] for m in ft.read_metrics(run)] == list(range(2, ft.REF_STEPS + 1, 2))
    same = ft.compare_weights(ft.step_dir(reference, ft.REF_STEPS), ft.step_dir(run, ft.REF_STEPS))
    assert same == {"model": True, "ema1": True, "ema2": True}, \
        f"max |diff| {ft.max_abs_diff(ft.step_dir(reference, ft.REF_STEPS), ft.step_dir(run, ft.REF_STEPS)):.3g}"


# ----------------------------------------------------------------------------------- EMA
def test_ema_update_formula_by_hand():
    model = nn.Linear(3, 2)
    ema = EMA(model, 0.75)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for e, b, p in zip(ema.params, before, model.parameters()):
        torch.testing.assert_close(e, 0.75 * b + 0.25 * p.detach(), rtol=0, atol=1e-7)
    assert set(ema.state_dict(model)) == {"weight", "bias"}


def test_ema_after_one_real_training_step(tmp_path):
    """One Trainer step with decays (0.9, 0.5): ema = d * initial + (1 - d) * updated, for every parameter
    (the frozen pos_embed included: it stays equal to the model's)."""
    trainer = Trainer(ft.folder_config(1, optim__ema_decays="0.9,0.5"), tmp_path / "ema", progress=False)
    names = [n for n, _ in trainer.model.named_parameters()]
    initial = [p.detach().clone() for p in trainer.model.parameters()]
    for ema in trainer.emas:
        assert all(torch.equal(e, p) for e, p in zip(ema.params, initial))
    images, labels = next(trainer.batches.iterate(0))
    with ft.single_thread():
        out = trainer.train_step(images, labels)
    assert trainer.step == 1 and math.isfinite(float(out["loss"]))
    updated = [p.detach() for p in trainer.model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(initial, updated)), "the step changed nothing"
    for ema, d in zip(trainer.emas, (0.9, 0.5)):
        assert ema.decay == d
        for name, e, p0, p1 in zip(names, ema.params, initial, updated):
            torch.testing.assert_close(e, d * p0 + (1 - d) * p1, rtol=0, atol=1e-6, msg=name)
    pos = names.index("pos_embed")
    assert torch.equal(trainer.emas[0].params[pos], trainer.model.pos_embed)


# ----------------------------------------------------------------------------------- lr schedule
def test_lr_schedule_function():
    cfg = load_config("test", None, ["optim.warmup_epochs=2", "optim.schedule=constant"])
    base = 4e-4
    assert lr_at(cfg, 0.0, base) == 0.0
    assert lr_at(cfg, 0.5, base) == pytest.approx(base / 4, rel=1e-12)
    assert lr_at(cfg, 1.0, base) == pytest.approx(base / 2, rel=1e-12)
    assert lr_at(cfg, 2.0, base) == base
    assert lr_at(cfg, 7.3, base) == base
    cos = load_config("test", None, ["optim.warmup_epochs=1", "optim.schedule=cosine", "optim.min_lr=1e-5",
                                     "train.epochs=11"])
    assert lr_at(cos, 1.0, base) == pytest.approx(base, rel=1e-12)
    assert lr_at(cos, 6.0, base) == pytest.approx(1e-5 + (base - 1e-5) * 0.5, rel=1e-12)
    assert lr_at(cos, 11.0, base) == pytest.approx(1e-5, rel=1e-12)


def test_lr_warmup_in_training_and_blr_scaling(tmp_path):
    """lr = blr * global batch / 256; 0.4 warmup epochs = 4 steps at 10 steps per epoch: the lr of steps
    1..6 is 0 (exactly), 1/4, 2/4, 3/4 of it, then constant; the lr-0 step leaves the weights unchanged."""
    blr = 0.0128
    trainer = Trainer(ft.folder_config(6, optim__lr="none", optim__blr=blr, optim__warmup_epochs=0.4),
                      tmp_path / "lr", progress=False)
    assert trainer.global_batch == ft.BATCH and trainer.steps_per_epoch == ft.STEPS_PER_EPOCH
    base = blr * ft.BATCH / 256
    assert trainer.base_lr == pytest.approx(base, rel=1e-12)
    initial = [p.detach().clone() for p in trainer.model.parameters()]
    lrs = []
    with ft.single_thread():
        for i, (images, labels) in enumerate(trainer.batches.iterate(0)):
            if i == 6:
                break
            lrs.append(trainer.train_step(images, labels)["lr"])
            if i == 0:
                assert all(torch.equal(a, b) for a, b in zip(initial, trainer.model.parameters())), \
                    "a step with lr 0 changed the weights"
    assert lrs[0] == 0.0
    assert lrs[1:] == pytest.approx([base / 4, base / 2, 3 * base / 4, base, base], rel=1e-12)
    explicit = Trainer(ft.folder_config(1, optim__lr=1e-3), tmp_path / "lr-abs", progress=False)
    assert explicit.base_lr == 1e-3


# ----------------------------------------------------------------------------------- AdamW groups
def test_adamw_param_groups(tmp_path):
    trainer = Trainer(ft.folder_config(1, optim__weight_decay=0.05), tmp_path / "groups", progress=False)
    groups = trainer.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.0, 0.05]
    assert groups[0]["betas"] == (0.9, 0.95)
    ids = [{id(p) for p in g["params"]} for g in groups]
    named = dict(trainer.model.named_parameters())
    no_decay = {n for n, p in named.items() if p.requires_grad and (p.ndim <= 1 or n.endswith(".bias"))}
    decay = {n for n, p in named.items() if p.requires_grad and n not in no_decay}
    assert {n for n, p in named.items() if id(p) in ids[0]} == no_decay
    assert {n for n, p in named.items() if id(p) in ids[1]} == decay
    assert sum(len(g["params"]) for g in groups) == len(no_decay) + len(decay)   # each parameter once
    assert not named["pos_embed"].requires_grad and all(id(named["pos_embed"]) not in s for s in ids)
    assert "y_embedder.embedding_table.weight" in decay and "in_context_posemb" in decay
    assert "blocks.0.streams.pixel.norm1.weight" in no_decay and "blocks.0.streams.pixel.attn.qkv.bias" in no_decay
    # plugin modules (aux) follow the same rule; frozen tensors are left out
    aux = nn.ModuleDict({"proj": nn.Linear(4, 4), "frozen": nn.Linear(2, 2)})
    aux["frozen"].requires_grad_(False)
    nd, d = param_groups([aux], 0.1)
    assert [id(p) for p in nd["params"]] == [id(aux["proj"].bias)]
    assert [id(p) for p in d["params"]] == [id(aux["proj"].weight)] and d["weight_decay"] == 0.1


# ----------------------------------------------------------------------------------- metrics.jsonl
def test_metrics_jsonl_fields(reference):
    rows = ft.read_metrics(reference)
    assert [r["step"] for r in rows] == list(range(2, ft.REF_STEPS + 1, 2))
    for r in rows:
        assert set(r) == {"loss", "loss/pixel", "grad_norm", "lr", "step", "epoch", "time", "img_per_s"}, r
        assert r["loss"] == pytest.approx(r["loss/pixel"]) and r["loss"] > 0 and math.isfinite(r["loss"])
        assert r["grad_norm"] > 0 and math.isfinite(r["grad_norm"])
        assert r["lr"] == 1e-3 and r["img_per_s"] > 0
        assert r["epoch"] == pytest.approx(r["step"] / ft.STEPS_PER_EPOCH)
    assert all(a["time"] <= b["time"] for a, b in itertools.pairwise(rows))
    saved = json.loads((reference / "config.json").read_text())
    assert saved["train"]["max_steps"] == ft.REF_STEPS and saved["model"] == "JiT-T/4"
    assert ckpt.list_checkpoints(reference) == [ft.step_dir(reference, ft.REF_STEPS)]
    assert (reference / "samples" / f"step-{ft.REF_STEPS:08d}.png").is_file()


# ----------------------------------------------------------------------------------- DDP (gloo, CPU)
DDP_STEPS, DDP_BLR = 4, 0.016


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    run, out = root / "run", root / "report"
    overrides = ft.folder_overrides(DDP_STEPS, optim__lr="none", optim__blr=DDP_BLR)
    codes, outputs = ft.launch_ddp(run, out, overrides, world=2, timeout=300)
    reports = {}
    for rank in range(2):
        path = root / f"report.rank{rank}.json"
        reports[rank] = json.loads(path.read_text()) if path.exists() else None
    return {"run": run, "codes": codes, "outputs": outputs, "reports": reports}


def test_ddp_two_ranks_rank0_checkpoint_and_metrics(ddp_run):
    """Rank 0 of a 2-process gloo run finishes, writes a checkpoint that verifies and loads (written by 2
    ranks, one RNG state per rank) and metrics.jsonl; lr = blr * global batch (2 x 8) / 256."""
    r0 = ddp_run["reports"][0]
    assert ddp_run["codes"][0] == 0 and r0 is not None, ddp_run["outputs"][0][-3000:]
    assert (r0["status"], r0["step"], r0["world_size"]) == ("finished", DDP_STEPS, 2)
    assert r0["global_batch"] == 2 * ft.BATCH and r0["steps_per_epoch"] == ft.STEPS_PER_EPOCH // 2
    assert r0["base_lr"] == pytest.approx(DDP_BLR * 2 * ft.BATCH / 256, rel=1e-12)
    run = ddp_run["run"]
    path = ckpt.latest_checkpoint(run)
    assert path == ft.step_dir(run, DDP_STEPS)
    weights, state = ckpt.load_checkpoint(path)
    assert state["world_size"] == 2 and state["step"] == DDP_STEPS and len(state["rng_per_rank"]) == 2
    assert ft.params_digest(weights["model"].items()) == r0["digests"][0]["model"]
    rows = ft.read_metrics(run)
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["lr"] == pytest.approx(r0["base_lr"]) for r in rows)


def test_ddp_all_ranks_finish_with_identical_model(ddp_run):
    assert ddp_run["codes"] == [0, 0], [o[-2000:] for o in ddp_run["outputs"]]
    r0, r1 = ddp_run["reports"][0], ddp_run["reports"][1]
    assert r1 is not None and r1["status"] == "finished"
    assert r0["digests"] == r1["digests"]                     # both ranks gathered the same thing
    assert r0["digests"][0]["model"] == r0["digests"][1]["model"]


def test_ddp_emas_identical_across_ranks(ddp_run):
    digests = ddp_run["reports"][0]["digests"]
    assert all(set(d) == {"model", "ema1", "ema2"} for d in digests), digests
    for name in ("ema1", "ema2"):
        assert digests[0][name] == digests[1][name], name
