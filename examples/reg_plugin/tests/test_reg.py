"""jit-reg-plugin: the global token stream (shape, calibrated target, null branch), gradients into its weights,
statistics refused when they are another encoder's, composition with V-Co, exact resume. Tiny real runs
(sklearn digits, JiT-T/4, 8x8 grid) with the real offline EfficientNet-Lite0."""
from __future__ import annotations

import pytest
import torch
from jit_core.plugins import Plugins, describe_all, installed_plugins
from jit_core.testing import nontrivial, tiny_setup
from vco_plugin.features import build_encoder

from jit_reg.calibration import EPS, STATS_FILE, RegStatsError, TokenStats, save_stats

OFFLINE = {"reg.encoder": "efficientnet_lite0", "reg.calib_images": 16}


def test_installed_through_the_entry_point_and_off_until_enabled():
    ep = installed_plugins()["reg"]
    assert ep.value == "jit_reg.plugin" and ep.dist.name == "jit-reg-plugin"
    assert "reg" not in Plugins().infos
    (info,) = [i for i in describe_all() if i.name == "reg"]
    assert not info.enabled and info.hooks == ["jit_options", "jit_presets", "jit_run_plugin", "jit_studies"]
    assert info.options["encoder"] == "dinov2" and info.options["null_branch"] == "structured"


def test_one_global_token_stream_whose_target_is_the_standardised_encoder_token(tmp_path):
    setup = tiny_setup(plugins=["reg"], run_dir=tmp_path, **OFFLINE)
    (_, reg) = setup.model.streams
    assert (reg.name, reg.kind, reg.tokens, reg.channels, reg.loss_weight) == ("reg", "tokens", 1, 112, 0.03)
    assert setup.model.input_shape(reg) == (1, 112)
    target = reg.normalize(reg.clean(setup.images, {}))
    assert target.shape == (len(setup.images), 1, 112) and not target.requires_grad

    # by hand: the L2-normalised pooled stride-16 stage of a fresh encoder, standardised with the saved statistics
    g = build_encoder("efficientnet_lite0").embedding(setup.images)
    assert torch.allclose(g.norm(dim=-1), torch.ones(len(g)), atol=1e-5)
    stats = setup.plugins.runs["reg"].stats()
    by_hand = (g - stats.mean) / torch.sqrt(stats.var + EPS) * stats.rms_pixels
    torch.testing.assert_close(target[:, 0], by_hand, rtol=1e-5, atol=1e-5)
    assert (setup.trainer.run_dir / STATS_FILE).is_file() and stats.meta["num_images"] == 16


def test_calibrated_tokens_of_the_calibration_images_are_centred_with_the_pixels_rms():
    g = torch.randn(64, 5, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.1, 1, 3, 0.01, 2]) + 4
    from jit_reg.calibration import compute_stats
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    stats = compute_stats(lambda x: g[: len(x)], [images])
    out = stats.apply(g[:, None])[:, 0]
    torch.testing.assert_close(out.mean(0), torch.zeros(5), atol=1e-4, rtol=0)
    expected = stats.rms_pixels ** 2 * stats.var / (stats.var + EPS)
    torch.testing.assert_close(out.var(0, unbiased=False), expected, rtol=1e-4, atol=1e-6)
    assert abs(stats.rms_pixels - images.square().mean().sqrt().item()) < 1e-6


def test_structured_null_branch_blocks_pixels_from_the_token_and_drops_its_loss(jit_one_step):
    _, all_dropped = jit_one_step(plugins=["reg"], **OFFLINE, **{"diffusion.label_drop_prob": 1.0})
    assert all_dropped["reg"] == 0 and all_dropped["pixel"] > 0
    _, label_drop = jit_one_step(plugins=["reg"], **OFFLINE, **{"diffusion.label_drop_prob": 1.0,
                                                                   "reg.null_branch": "label_drop"})
    assert label_drop["reg"] > 0
    setup = tiny_setup(plugins=["reg"], **OFFLINE)
    reg = setup.model.streams[1]
    branch = reg.null_branch(torch.tensor([True, False]), setup.model.streams, True)
    assert list(branch.blocked) == [("pixel", "reg")] and branch.loss_masks["reg"].tolist() == [0.0, 1.0]


def test_gradients_reach_every_weight_of_the_token_stream_and_none_reach_the_encoder():
    setup = tiny_setup(plugins=["reg"], **OFFLINE)
    nontrivial(setup.model)
    _, losses = setup.step()
    losses["reg"].backward()
    own = {n: p for n, p in setup.model.named_parameters() if ".reg." in f".{n}." or n.startswith(("embedders.reg",
                                                                                                   "heads.reg"))}
    assert any(n.startswith("embedders.reg") for n in own) and any(n.startswith("heads.reg") for n in own)
    assert any(".reg." in n and n.startswith("blocks.") for n in own)
    missing = [n for n, p in own.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    enc = setup.plugins.runs["reg"].encoder("cpu")
    assert all(not p.requires_grad and p.grad is None for p in enc.parameters())


def test_statistics_of_another_encoder_are_refused_in_one_line(tmp_path):
    path = tmp_path / "dinov2_stats.safetensors"
    save_stats(TokenStats(torch.zeros(768), torch.ones(768), 0.5, {"encoder": "dinov2"}), path)
    with pytest.raises(RegStatsError) as err:
        tiny_setup(plugins=["reg"], **OFFLINE, **{"reg.stats": str(path)})
    msg = str(err.value)
    assert "\n" not in msg and "for encoder 'dinov2'" in msg and "'efficientnet_lite0'" in msg and "reg.stats" in msg
    path.write_bytes(b"not safetensors")
    with pytest.raises(RegStatsError, match="unreadable"):
        tiny_setup(plugins=["reg"], **OFFLINE, **{"reg.stats": str(path)})


def test_composes_with_vco(jit_one_step):
    """REG and V-Co add independent streams (global token, patch features) with their own null branches."""
    setup = tiny_setup(plugins=["vco", "reg"], **OFFLINE, **{"vco.encoder": "efficientnet_lite0",
                                                              "vco.groups_per_step": 2, "vco.calib_images": 16})
    assert [s.name for s in setup.model.streams] == ["pixel", "feature", "reg"]
    _, losses = setup.step()
    assert {"pixel", "feature", "reg", "hybrid"} <= set(losses) and all(torch.isfinite(v) for v in losses.values())


def test_resumes_bit_identically(tmp_path):
    from jit_core.testing import check_resumes_bit_identically
    check_resumes_bit_identically(tmp_path, plugins=["reg"], steps=4, **OFFLINE)


def test_study_is_registered_with_jit_and_vco_arms():
    from jit_reg.study import studies
    study = studies()["reg-tiny"]
    assert [a.name for a in study.arms] == ["JiT", "REG", "V-Co"] and study.baseline == "JiT"
    assert study.seeds == (0, 1, 2) and study.arm("REG").changes == ("plugins", "reg.*")


def test_jit_study_dry_run_lists_the_three_arms(jit_cli):
    res = jit_cli("study", "reg-tiny", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "3 arms x 3 seeds = 9 runs" in res.output and all(a in res.output for a in ("JiT", "REG", "V-Co"))
