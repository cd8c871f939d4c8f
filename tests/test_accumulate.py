"""Gradient accumulation (``train.grad_accum``): 1 process x 4 micro-batches trains what 4 ranks of real gloo DDP
train (same losses, same weights within float reassociation), for JiT and V-Co; and a run with accumulation
resumes bit-identically."""
from __future__ import annotations

import json

import pytest
import torch

from jit_core.runs import checkpoint as ckpt
from tests import fault_tools as ft

RANKS, STEPS, BLR = 4, 4, 0.016
# losses: the same draws, reassociated sums; weights: 4 AdamW steps amplify the reassociation a little
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 2e-5


def _overrides(*extra: str) -> list[str]:
    return [*ft.folder_overrides(STEPS, optim__lr="none", optim__blr=BLR), "train.log_every=1", *extra]


def _ddp_vs_accum(tmp_path, *extra: str) -> tuple[dict, dict]:
    """The same recipe trained by 4 gloo ranks and by 1 process with train.grad_accum=4: (ddp, accum) results."""
    ddp_run, out = tmp_path / "ddp", tmp_path / "report"
    codes, outputs = ft.launch_ddp(ddp_run, out, _overrides(*extra), world=RANKS, timeout=400,
                                   installed_plugins=any(e.startswith("plugins=") for e in extra))
    assert codes == [0] * RANKS, [o[-3000:] for o in outputs]
    report = json.loads((tmp_path / "report.rank0.json").read_text())
    from jit_core.config import load_config
    accum_run = tmp_path / "accum"
    config = load_config("test", None, _overrides(*extra, f"train.grad_accum={RANKS}"))
    result = ft.train_in_process(config, accum_run)
    assert result.status == "finished" and result.step == STEPS
    return ({"run": ddp_run, "report": report}, {"run": accum_run})


def _assert_same_training(ddp: dict, accum: dict) -> None:
    a, b = ft.read_metrics(ddp["run"]), ft.read_metrics(accum["run"])
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    for ra, rb in zip(a, b):
        assert rb["lr"] == pytest.approx(ra["lr"], rel=1e-12)        # lr from the real global batch (4 x 8)
        losses = {k for k in ra if k.startswith("loss")}
        assert losses == {k for k in rb if k.startswith("loss")}
        for k in losses:
            assert rb[k] == pytest.approx(ra[k], rel=LOSS_RTOL), (ra["step"], k)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-4)
    assert ft.max_abs_diff(ft.step_dir(ddp["run"], STEPS), ft.step_dir(accum["run"], STEPS)) < WEIGHT_ATOL
    _, sa = ckpt.load_checkpoint(ft.step_dir(ddp["run"], STEPS))
    _, sb = ckpt.load_checkpoint(ft.step_dir(accum["run"], STEPS))
    assert sa["world_size"] == sb["world_size"] == RANKS               # the checkpoint names the recipe's ranks
    for ra, rb in zip(sa["rng_per_rank"], sb["rng_per_rank"]):         # every rank's RNG where rank r left it
        assert torch.equal(ra["torch"], rb["torch"])


@pytest.mark.slow
def test_jit_one_process_four_micro_batches_trains_what_four_ddp_ranks_train(tmp_path):
    ddp, accum = _ddp_vs_accum(tmp_path)
    assert ddp["report"]["global_batch"] == RANKS * ft.BATCH
    _assert_same_training(ddp, accum)


@pytest.mark.slow
def test_vco_one_process_four_micro_batches_trains_what_four_ddp_ranks_train(tmp_path):
    """V-Co: 8 class groups per global step, 2 per rank; the hybrid loss groups by the virtual rank's groups."""
    ddp, accum = _ddp_vs_accum(tmp_path, "plugins=vco", "vco.encoder=efficientnet_lite0", "vco.groups_per_step=8",
                               "vco.calib_images=16")
    assert any(k == "loss/hybrid" for k in ft.read_metrics(accum["run"])[0])
    _assert_same_training(ddp, accum)


def test_resume_with_accumulation_is_bit_identical(tmp_path):
    """Stopped at a checkpoint (step 2) and resumed: the same weights, bit for bit, as the uninterrupted run."""
    from jit_core.config import load_config
    extra = ("train.grad_accum=2", "train.max_steps=4")
    whole, split = tmp_path / "whole", tmp_path / "split"
    ft.train_in_process(load_config("test", None, _overrides(*extra)), whole)
    ft.train_in_process(load_config("test", None, _overrides(*extra[:1], "train.max_steps=2")), split)
    result = ft.train_in_process(load_config("test", None, _overrides(*extra)), split)
    assert result.step == 4
    assert all(ft.compare_weights(ft.step_dir(whole, 4), ft.step_dir(split, 4)).values())
    assert [r["loss"] for r in ft.read_metrics(whole)] == [r["loss"] for r in ft.read_metrics(split)]


def test_resume_refuses_another_number_of_ranks(tmp_path):
    """A checkpoint of 2 (virtual) ranks does not resume as 1 or 4: the data order and RNG are per rank."""
    from jit_core.config import ConfigError, load_config
    run = tmp_path / "run"
    ft.train_in_process(load_config("test", None, _overrides("train.grad_accum=2", "train.max_steps=2")), run)
    with pytest.raises(ConfigError, match="written by 2 ranks .* processes x train.grad_accum = 2"):
        ft.train_in_process(load_config("test", None, _overrides("train.grad_accum=4", "train.max_steps=4")), run)


@pytest.mark.slow
def test_resume_on_another_split_of_the_same_ranks(tmp_path):
    """Steps 1-2 as 1 process x 4 micro-batches, steps 3-4 as 2 gloo ranks x 2: what 1 x 4 trains in one go."""
    from jit_core.config import load_config
    whole, split = tmp_path / "whole", tmp_path / "split"
    ft.train_in_process(load_config("test", None, _overrides(f"train.grad_accum={RANKS}")), whole)
    ft.train_in_process(load_config("test", None, _overrides(f"train.grad_accum={RANKS}", "train.max_steps=2")), split)
    assert ft.latest_step(split) == 2           # a run folder with a checkpoint is resumed (or refused), never restarted
    codes, outputs = ft.launch_ddp(split, tmp_path / "report", _overrides("train.grad_accum=2"), world=2, timeout=400)
    assert codes == [0, 0], [o[-3000:] for o in outputs]
    _assert_same_training({"run": whole}, {"run": split})
