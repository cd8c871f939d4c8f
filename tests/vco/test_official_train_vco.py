"""One official V-Co training step (final recipe) reproduced by our training code, term by term and gradient by
gradient.

The official code (HL-hanlin/V-Co, the code of arXiv 2603.16792, its ``vco_base.sh`` recipe) computed it on the
tiny dual-stream net of ``vco_tiny`` with a 1-layer DINOv2 as its frozen encoder (docs/official-code.md,
"Parity fixtures"). Its random draws are fed to our code in the same roles: the joint-drop uniforms ->
``drop``, the logit-normal normals -> ``t``, the pixel and feature noise -> ``noise``. Everything else is ours:
the encoder (:class:`vco_plugin.features.DINOv2Encoder` reading the fixture's weights), the calibration
(``FeatureStream.normalize`` with the official variances and alpha = 0.485), the structured null branch, the
feature loss with dropped rows zeroed, the hybrid loss x 10 on the true labels, and
:func:`jit_core.diffusion.training_losses` that the trainer's objective calls.
"""
from __future__ import annotations

import pytest
import torch

from jit_core.config import get_preset
from jit_core.diffusion.flow import logit_normal_t, training_losses
from jit_core.official.layout import from_official, to_official
from jit_core.plugins import resolve_run
from jit_core.runs.network import build_network
from jit_core.training.optim import param_groups, peak_lr
from tests.official_fixtures import compact, dinov2_tiny_path
from vco_plugin.calibration import FeatureStats, save_stats
from vco_plugin.features import build_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

# the fixture's advice: ~1e-6 relative on losses, 1e-5 relative on gradients (2 threads move them by <= 6e-9)
LOSS_RTOL, GRAD_RTOL = 1e-6, 1e-5


def official_stats_file(folder) -> str:
    """The official stat.pt variances as our statistics file: (C, h, w) -> (h * w, C) tokens, alpha 0.485."""
    var = compact("vco_train")["stat/var"]
    tokens = var.permute(1, 2, 0).reshape(-1, var.shape[0]).contiguous()
    path = folder / "official_stats.safetensors"
    save_stats(FeatureStats(var=tokens, rms_factor=0.485, meta={"source": "official V-Co stat.pt"}), path)
    return str(path)


@pytest.fixture(scope="module")
def setup(vco, tmp_path_factory):
    """The recipe's config on the tiny net, and our network holding the official weights."""
    cfg = get_preset("vco-b16")
    cfg.model = "JiT-T/4"
    cfg.model_overrides = {**cfg.model_overrides, "image_size": 256, "patch_size": 16, "num_classes": 10}  # the fixture's
    cfg.data.image_size = 256
    cfg.plugin_options["vco"].update(
        encoder="dinov2", encoder_weights=str(dinov2_tiny_path()), stats=official_stats_file(tmp_path_factory.mktemp("s")),
        rms_factor=0.485, class_balanced=False)   # the official hybrid loss groups by the true labels
    cfg, _ = resolve_run(cfg, plugins=vco)
    model = build_network(cfg, vco, cfg.model_config)
    sd, layout = from_official(compact("vco_tiny").weights())
    assert layout == "vco"
    model.load_state_dict(sd, strict=True)
    return cfg, vco, model.train()


def test_encoder_targets_and_hybrid_positives(setup):
    """Our DINOv2 code on the fixture's encoder: the calibrated clean feature tokens and the hybrid loss's f+."""
    cfg, plugins, model = setup
    fx = compact("vco_train")
    feature = model.streams[1]
    with torch.no_grad():
        target = feature.normalize(feature.clean(fx["x"], {}))
        positives = build_encoder("dinov2", str(dinov2_tiny_path())).embedding(fx["x"])
    fx.check(target, "feat_target", rtol=1e-5, atol=1e-5)
    fx.check(positives, "hybrid_cls_x", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["drop_row0", "drop_rows013"])
def test_training_step_every_loss_term_and_every_gradient(setup, case):
    cfg, plugins, model = setup
    fx, d = compact("vco_train"), cfg.diffusion
    t = logit_normal_t(fx["t_normal"], d.P_mean, d.P_std)
    torch.testing.assert_close(t, fx["t"], rtol=0, atol=0)
    drop = fx[f"{case}/drop_uniforms"] < d.label_drop_prob                  # one mask: label and features
    assert torch.equal(drop, fx[f"{case}/drop"])

    model.zero_grad(set_to_none=True)
    total, losses = training_losses(model, model.streams, fx["x"], fx["labels"], cfg, plugins.hook, drop=drop,
                                    t=t, noise={"pixel": fx["noise"], "feature": fx["noise_f"]})
    weight = {s.name: s.loss_weight for s in model.streams}
    assert weight == {"pixel": 1.0, "feature": 0.1}
    terms = {"loss_pixels": losses["pixel"], "loss_dinov2": weight["feature"] * losses["feature"],
             "loss_drifting_v3": losses["hybrid"], "total_loss": total}
    for name, value in terms.items():
        torch.testing.assert_close(value.detach(), fx[f"{case}/{name}"], rtol=LOSS_RTOL, atol=0,
                                   msg=lambda m, name=name: f"{case} {name}: {m}")
    total.backward()

    sd = model.state_dict()
    names = dict(zip(sd, to_official(sd)))
    graded = {names[n]: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert sorted(graded) == sorted(fx.meta[f"{case}/grad_names"])          # 106 tensors, none missing or extra
    assert all(g is not None for g in graded.values())
    for name, grad in graded.items():
        fx.check(grad, f"{case}/grads/{name}", rtol=GRAD_RTOL, scaled_atol=GRAD_RTOL)


def test_the_two_drop_patterns_differ_where_the_recipe_says():
    """Dropping the singleton class's only sample changes the feature term, not the pixel or hybrid terms much."""
    fx = compact("vco_train")
    a, b = "drop_row0", "drop_rows013"
    assert abs(fx[f"{a}/loss_dinov2"] - fx[f"{b}/loss_dinov2"]) > 0.1
    assert fx[f"{b}/labels_dropped"].tolist() == [10, 10, 3, 10]


def test_weight_decay_groups_and_lr_rule_are_the_official_ones(setup):
    cfg, _, model = setup
    groups = compact("vco_train").meta["param_groups"]
    sd = model.state_dict()
    names = dict(zip(sd, to_official(sd)))
    by_id = {id(p): names[n] for n, p in model.named_parameters()}
    no_decay, decay = param_groups([model], weight_decay=0.05)
    assert sorted(by_id[id(p)] for p in decay["params"]) == sorted(groups["decay_names"])          # 42
    assert sorted(by_id[id(p)] for p in no_decay["params"]) == sorted(groups["no_decay_names"])    # 64
    # main_vco.py: lr = blr x batch per rank x world / 256; ours follows the real global batch the same way
    assert "256" in groups["lr_rule"]
    assert peak_lr(cfg, 128 * 8) == pytest.approx(cfg.optim.blr * 1024 / 256, rel=1e-15)
