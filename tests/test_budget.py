"""jit_core/model/budget.py, the one size model: parameters exact against the network built on the meta device,
FLOPs against the JiT paper's table, activation memory against the op-by-op count of benchmarks/memory_estimate.py;
every GPU preset fits an 80 GB card; the start-up refuses what does not fit (with the fix) and a silent CPU."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from jit_core.config import ConfigError, load_config
from jit_core.distributed import DistInfo
from jit_core.model import MODEL_CONFIGS, JiT, budget, get_model_config
from jit_core.model.streams import Stream, pixel_stream
from jit_core.training.devices import check_device_choice

ROOT = Path(__file__).resolve().parents[1]
# JiT paper (arXiv 2511.13720), Table of model configurations: "GFLOPs" per 256/512 px image (= MACs)
PAPER_GFLOPS = {"JiT-B/16": 25, "JiT-B/32": 26, "JiT-L/16": 88, "JiT-L/32": 89, "JiT-H/16": 182, "JiT-H/32": 183,
                "JiT-G/16": 383}


def _feature(channels=768, in_context=True) -> Stream:
    return Stream("feature", kind="tokens", channels=channels, in_context=in_context, default_init=True)


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_parameters_exact_against_the_network_on_the_meta_device(name):
    mc = MODEL_CONFIGS[name]
    for streams in ([pixel_stream(mc.in_channels)], [pixel_stream(mc.in_channels), _feature()],
                    [pixel_stream(mc.in_channels), _feature(112, in_context=False)]):
        with torch.device("meta"):
            net = JiT(mc, streams)
        p = budget.params(mc, streams)
        assert (p.trainable, p.total) == (net.num_params(), net.num_params(trainable_only=False)), (name, streams)


def test_flops_match_the_paper():
    for name, gflops in PAPER_GFLOPS.items():
        macs = sum(budget.forward_macs(get_model_config(name)).values())
        assert macs / 1e9 == pytest.approx(gflops, rel=0.02), name
    mc = get_model_config("JiT-B/16")
    assert budget.train_flops(mc) == 6 * sum(budget.forward_macs(mc).values())
    assert budget.train_flops(mc, [pixel_stream(), _feature()]) > 2 * budget.train_flops(mc)   # joint attention


def test_activation_memory_reproduces_the_op_by_op_count():
    """benchmarks/results/memory_estimate.json: saved tensors counted op by op (bf16 autocast, SDPA); V-Co's
    encoder part is a plugin's frozen module and compared separately (0.7 B per parameter and image)."""
    data = json.loads((ROOT / "benchmarks" / "results" / "memory_estimate.json").read_text())
    for row in data["rows"]:
        vco = row["model"].startswith("V-Co")
        mc = get_model_config(row["model"].replace("V-Co", "JiT"), **({"proj_drop": 0.0, "attn_drop": 0.0} if vco else {}))
        streams = [pixel_stream(3), _feature()] if vco else None
        est = budget.training_memory(mc, streams, batch=row["batch"], checkpointing=row["ckpt"])
        counted = (row["activations_gib"] - row["activation_parts_gib"].get("encoder", 0)) * budget.GIB
        assert est.activations == pytest.approx(counted, rel=0.012), (row["model"], row["batch"], row["ckpt"])
        resident = (row["resident_gib"] - row["resident_parts_gib"]["encoder"]) * budget.GIB
        assert est.resident == pytest.approx(resident, rel=1e-3)
        if vco:
            enc = budget.training_memory(mc, streams, batch=row["batch"], frozen=budget.Frozen(86_600_000)).parts["frozen"]
            assert enc == pytest.approx(row["activation_parts_gib"]["encoder"] * budget.GIB, rel=0.05)


def test_frozen_modules_are_counted_without_knowing_the_plugin():
    encoder = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Flatten(2))
    for p in encoder.parameters():
        p.requires_grad_(False)
    counted = Stream("feature", channels=8, target=lambda x: encoder.to(x.device)(x).transpose(1, 2))
    assert budget.frozen_modules([pixel_stream(), counted], (3, 32, 32)).params == 3 * 8 * 16 + 8
    by_content = Stream("feature", channels=8, target=lambda x: x[0, 0, 0, 0].item())   # needs real pixels
    assert budget.frozen_modules([pixel_stream(), by_content], (3, 32, 32)) is None
    assert budget.frozen_modules([pixel_stream()], (3, 32, 32)) == budget.Frozen()
    # a target that builds its encoder on first use draws its init: the training RNG must not move
    lazy = Stream("feature", channels=8, target=lambda x: nn.Linear(3, 8).requires_grad_(False).to(x.device)(
        x.flatten(2).transpose(1, 2)))
    before = torch.get_rng_state()
    assert budget.frozen_modules([pixel_stream(), lazy], (3, 32, 32)).params == 3 * 8 + 8
    assert torch.equal(torch.get_rng_state(), before)


GPU_PRESETS = ("jit-b16", "jit-b16-wide", "jit-b32", "jit-l16", "jit-l32", "jit-h16", "jit-h32", "jit-g16",
               "vco-b16", "vco-l16", "vco-h16")


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_every_gpu_preset_fits_an_80_gb_card_and_checkpoints_only_where_needed(preset, vco):
    """Each preset's estimate (V-Co with DINOv2-B/14's 86.6 M frozen parameters) fits; activation checkpointing
    is on exactly where 128 images per GPU would not fit without it."""
    from jit_core.training.memory_plan import run_estimate
    config = load_config(preset)
    mc = get_model_config(config.model, **config.model_overrides)
    streams = [pixel_stream(3)] + ([_feature()] if config.plugins else [])
    frozen = budget.Frozen(86_600_000) if config.plugins else None
    est = run_estimate(config, mc, streams, frozen)
    assert est.fits(budget.GPU_GIB), (preset, est.peak_gib)
    config.train.grad_checkpointing = False
    assert run_estimate(config, mc, streams, frozen).fits(budget.GPU_GIB) != est.checkpointing, preset


def test_fitting_setting_prefers_checkpointing_then_micro_batches():
    from jit_core.training.memory_plan import fitting_setting
    config = load_config("jit-l16", None, ["train.grad_checkpointing=false"])
    mc = get_model_config(config.model)
    assert fitting_setting(config, mc, None, None, budget.GPU_GIB) == "train.grad_checkpointing=true"
    fix = fitting_setting(config, mc, None, None, 14.0)
    assert fix.startswith("train.grad_checkpointing=true optim.batch_size=")
    micro = int(fix.split("optim.batch_size=")[1].split()[0])
    assert f"train.grad_accum={128 // micro}" in fix and micro < 128
    assert fitting_setting(config, mc, None, None, 1.0) is None


def _dry_run(cli_runner, tmp_path, *overrides):
    from jit_core.cli import cli
    from tests import fault_tools as ft
    return cli_runner.invoke(cli, ["train", "--preset", "test", "--run-dir", str(tmp_path / "run"), "--dry-run",
                                   *ft.folder_overrides(2), *overrides])


def cli_group():
    from jit_core.cli import cli
    return cli


def test_dry_run_prints_the_peak_per_gpu_and_refuses_what_cannot_fit(tmp_path):
    from click.testing import CliRunner
    runner = CliRunner()
    res = _dry_run(runner, tmp_path, "train.gpu_memory_gib=80")
    assert res.exit_code == 0, res.output
    assert "estimated peak memory per GPU:" in res.output and "of 80.0 GiB" in res.output
    from tests import fault_tools as ft
    images = ft.make_image_folder(tmp_path / "images", classes=2, per_class=64)   # one batch of 128
    res = runner.invoke(cli_group(), ["train", "--preset", "jit-h16", "--run-dir", str(tmp_path / "h"), "--dry-run",
                                      "data.name=folder", f"data.path={images}"])
    assert res.exit_code != 0 and "sized for GPUs" in res.output and "train.device=cpu" in res.output
    res = runner.invoke(cli_group(), ["train", "--preset", "jit-h16", "--run-dir", str(tmp_path / "h"), "--dry-run",
                                      "data.name=folder", f"data.path={images}", "train.device=cpu"])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("estimated peak memory per GPU"))
    assert float(line.split(": ")[1].split(" GiB")[0]) <= budget.GPU_GIB and "checkpointing on" in line
    res = _dry_run(runner, tmp_path, "train.gpu_memory_gib=0.5")
    assert res.exit_code != 0
    assert "does not fit; use a GPU with more memory" in res.output
    assert not (tmp_path / "run").exists()


def test_no_silent_cpu(tmp_path):
    """train.device=auto on the CPU: refused when a GPU is installed that torch cannot use (the probe's answer is
    a parameter here), and for a GPU-sized model unless train.device=cpu says so."""
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="a GPU is installed but torch .* cannot use it.*train.device=cpu"):
        check_device_choice("auto", cpu, 1_000, gpu_here=True)
    with pytest.raises(ConfigError, match="131 M parameters.*set train.device=cpu"):
        check_device_choice("auto", cpu, 131_123_712, gpu_here=False)
    check_device_choice("auto", cpu, 728_368, gpu_here=False)         # the CPU demo's size
    check_device_choice("cpu", cpu, 131_123_712, gpu_here=True)       # said explicitly
    from jit_core.training.startup import start_checks
    from tests import fault_tools as ft
    config = ft.folder_config(2)
    config.train.device = "auto"
    with pytest.raises(ConfigError, match="a GPU is installed"):
        start_checks(config, None, DistInfo(), gpu_here=True)
    start_checks(config, None, DistInfo(), gpu_here=False)


def test_slurm_planner_proposes_the_setting_that_fits_and_names_no_plugin(tmp_path):
    """``jit slurm submit``'s memory planner: a GPU run that does not fit gets the setting that does (here the
    micro-batch with train.grad_accum keeping the global batch); the host request comes from the same budget."""
    from slurm.memory import estimate_task_gb, plan_memory
    from slurm.options import resolve_options
    from slurm.runs import RunSpec
    fits = RunSpec(load_config("jit-l16"), tmp_path / "a", "fits")
    tight = RunSpec(load_config("jit-l16", None, ["train.gpu_memory_gib=14"]), tmp_path / "b", "tight")
    opts, warnings = plan_memory([fits, tight], resolve_options({}, {"gpus_per_node": 8}))
    assert len(warnings) == 1 and warnings[0].startswith("tight: estimated peak per GPU")
    assert "add optim.batch_size=" in warnings[0] and "train.grad_accum=" in warnings[0]
    l16 = budget.params(get_model_config("JiT-L/16"))
    assert estimate_task_gb(fits.config, gpu=True) == pytest.approx(4.0 + 24 * l16.trainable / 2 ** 30
                                                                    + 12 * l16.frozen / 2 ** 30
                                                                    + 0.5 * fits.config.data.num_workers)
    assert opts.mem_per_task >= 8
    import slurm.memory
    text = Path(slurm.memory.__file__).read_text().lower()
    assert not any(name in text for name in ("vco_names", "vco_plugin", "dinov2", "efficientnet", "streams = 2"))
