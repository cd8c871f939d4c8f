"""jit-repa-plugin: installed as an entry point, trains through jit_core's hooks, logs loss/repa,
trains its projector and never its encoder. Tiny real runs (sklearn digits, JiT-T/4, 8x8 grid)."""
from __future__ import annotations

import logging

import pytest
import torch
from jit_core.config import ConfigError
from jit_core.plugins import Plugins, describe_all, installed_plugins
from jit_core.testing import tiny_setup
from safetensors.torch import load_file

from jit_repa import plugin
from jit_repa.encoder import build_encoder, default_weights_file


def test_installed_through_the_entry_point_and_off_until_enabled():
    ep = installed_plugins()["repa"]
    assert ep.value == "jit_repa.plugin" and ep.dist.name == "jit-repa-plugin"
    assert "repa" not in Plugins().infos
    (info,) = [i for i in describe_all() if i.name == "repa"]
    assert not info.enabled and info.source == "entry point jit-repa-plugin" and info.version == "0.1.0"
    assert info.hooks == ["jit_options", "jit_run_plugin"]      # the rest are its run object's
    assert info.options == {"coef": 0.5, "block": 4, "encoder": "efficientnet_lite0", "encoder_weights": None,
                            "projector_dim": 256}


def test_trains_and_logs_its_loss_term(jit_train):
    result, metrics = jit_train(plugins=["repa"], steps=2)
    assert result.status == "finished" and len(metrics) == 2
    for m in metrics:
        assert 0 < m["loss/repa"] <= 2 * 0.5 and m["loss"] > m["loss/pixel"]
    aux = load_file(str(result.checkpoint / "aux.safetensors"))
    assert set(aux) == {f"repa_projector.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert aux["repa_projector.0.weight"].shape == (256, 64) and aux["repa_projector.4.weight"].shape == (112, 256)


def test_projector_gets_gradients_and_the_encoder_none(tmp_path):
    setup = tiny_setup(plugins=["repa"], run_dir=tmp_path)
    assert setup.capture == [2]                              # block 4 clamped to JiT-T/4's last block
    _, losses = setup.step()
    losses["repa"].backward()                              # the alignment term alone
    projector = setup.aux["repa_projector"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    enc = setup.plugins.runs["repa"].encoder("cpu")
    assert all(not p.requires_grad and p.grad is None for p in enc.parameters()) and not enc.training
    model = setup.model
    assert model.embedders["pixel"].proj1.weight.grad.abs().sum() > 0      # the alignment shapes the trunk ...
    assert all(p.grad is None for p in model.heads["pixel"].parameters())  # ... not the output head


def test_coefficient_scales_the_term_and_options_are_checked(jit_one_step, caplog):
    _, half = jit_one_step(plugins=["repa"])
    _, quarter = jit_one_step(plugins=["repa"], **{"repa.coef": 0.25, "repa.block": 4})
    assert torch.allclose(quarter["repa"] * 2, half["repa"]) and torch.equal(quarter["pixel"], half["pixel"])
    with caplog.at_level(logging.WARNING, logger="jit_repa.plugin"):
        setup = tiny_setup(plugins=["repa"], **{"repa.block": 7, "repa.projector_dim": 32})
    assert setup.capture == [2] and "repa.block=7 but JiT-T/4 has 3 blocks" in caplog.text
    assert tiny_setup(plugins=["repa"], **{"repa.block": 1}).capture == [1]
    with pytest.raises(ConfigError, match="repa.coef"):
        jit_one_step(plugins=["repa"], **{"repa.coef": "abc"})
    with pytest.raises(ConfigError, match="repa.encoder=dinov2: must be one of efficientnet_lite0"):
        jit_one_step(plugins=["repa"], **{"repa.encoder": "dinov2"})
    with pytest.raises(ConfigError, match="repa.block=-1: must be >= 0"):
        jit_one_step(plugins=["repa"], **{"repa.block": -1})


def test_encoder_is_the_real_offline_efficientnet_on_the_model_grid():
    enc = build_encoder("efficientnet_lite0")
    packaged = torch.load(default_weights_file(), map_location="cpu", weights_only=True)
    assert torch.equal(enc.net.conv_stem.weight, packaged["_conv_stem.weight"])     # names paired in order
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokens = enc.tokens(images, grid=8)
    assert tokens.shape == (2, 64, 112) and not tokens.requires_grad and torch.isfinite(tokens).all()
    assert torch.equal(tokens, enc.tokens(images.expand(-1, 3, -1, -1), grid=8))   # grayscale -> RGB


def test_stride8_encoder_gives_the_features_vco_co_denoises():
    """``repa.encoder=efficientnet_lite0_s8``: the stride-8 stage at 8 x grid px, the tokens of V-Co's
    EfficientNet stream (so REPA as V-Co's ablation aligns to the features V-Co co-denoises)."""
    from vco_plugin.features import build_encoder as vco_encoder
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    tokens = build_encoder("efficientnet_lite0_s8").tokens(images, grid=8)
    assert tokens.shape == (2, 64, 40)
    torch.testing.assert_close(tokens, vco_encoder("efficientnet_lite0").target_tokens(images, 8))


def test_alignment_loss_is_one_minus_cosine():
    x = torch.randn(2, 5, 7)
    assert plugin.alignment_loss(x, 3 * x).abs() < 1e-6
    assert torch.allclose(plugin.alignment_loss(x, -x), torch.tensor(2.0))
    y = torch.randn(2, 5, 7)
    assert torch.allclose(plugin.alignment_loss(x, y), (1 - torch.cosine_similarity(x, y, dim=-1)).mean())


def test_resumes_bit_identically_and_off_is_the_baseline(tmp_path):
    from jit_core.testing import check_off_equals_baseline, check_resumes_bit_identically
    check_resumes_bit_identically(tmp_path, plugins=["repa"], steps=4, **{"repa.projector_dim": 32})
    check_off_equals_baseline(tmp_path, plugins=["repa"], off={"repa.coef": 0.0, "repa.projector_dim": 32}, steps=2)
