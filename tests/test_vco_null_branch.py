"""The structured unconditional branch (docs/official-code.md#null-branch): labels, the stream block matrix, loss masks, and
its effect on a real multi-stream JiT."""
from __future__ import annotations

import pytest
import torch

from jit_core.model import JiT, ModelConfig, get_model_config
from jit_core.model.streams import Stream, pixel_stream
from jit_core.official.layout import from_official
from vco_plugin.null_branch import structured_unconditional

from .official_fixtures import compact


def _streams(channels=8, extra=False):
    s = [pixel_stream(3), Stream("feature", kind="tokens", channels=channels, default_init=True)]
    return s + [Stream("edges", kind="tokens", channels=4)] if extra else s


def test_unconditional_fields():
    labels = torch.tensor([3, 1, 4, 1])
    drop = torch.tensor([True, False, True, False])
    u = structured_unconditional(labels, drop, _streams(extra=True), num_classes=10)
    assert u.labels.tolist() == [10, 1, 10, 1]
    assert u.blocked.shape == (4, 3, 3) and u.blocked.dtype == torch.bool
    assert u.blocked[:, 0, 1].tolist() == drop.tolist()                     # pixel queries -> feature keys
    other = u.blocked.clone()
    other[:, 0, 1] = False
    assert not other.any()                                                  # nothing else is blocked
    assert set(u.loss_masks) == {"feature"}                                 # the pixel loss is kept for all
    assert u.loss_masks["feature"].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_symmetric_variant_and_no_feature_stream():
    drop = torch.tensor([True, False])
    b = structured_unconditional(torch.tensor([2, 5]), drop, _streams(), num_classes=10, symmetric=True).blocked
    assert b[:, 0, 1].tolist() == [True, False] and b[:, 1, 0].tolist() == [True, False]
    assert not b[:, 0, 0].any() and not b[:, 1, 1].any()
    u = structured_unconditional(torch.tensor([2, 5]), drop, [pixel_stream(3)], num_classes=10)
    assert u.labels.tolist() == [10, 5] and u.blocked is None and u.loss_masks == {}


def _random_model(streams, seed=0):
    torch.manual_seed(seed)
    model = JiT(get_model_config("JiT-T/4"), streams, attention_path="exact").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))   # make the zero-initialised adaLN and heads non-trivial
    return model


@pytest.mark.parametrize("symmetric", [False, True])
def test_mask_semantics_by_perturbation(symmetric):
    streams = _streams()
    model = _random_model(streams)
    g = torch.Generator().manual_seed(1)
    z = {"pixel": torch.randn(2, 3, 32, 32, generator=g), "feature": torch.randn(2, 64, 8, generator=g)}
    t = torch.tensor([0.3, 0.7])
    labels = torch.tensor([4, 9])
    drop = torch.tensor([True, False])                  # sample 0 dropped, sample 1 kept
    u = structured_unconditional(labels, drop, streams, num_classes=10, symmetric=symmetric)

    def run(zz):
        with torch.no_grad():
            return model(zz, t, u.labels, blocked=u.blocked).x_hat

    base = run(z)
    feat = run({"pixel": z["pixel"], "feature": z["feature"] + torch.randn(2, 64, 8, generator=g)})
    assert torch.allclose(feat["pixel"][0], base["pixel"][0], atol=1e-6, rtol=0)   # dropped: pixels blind to features
    assert (feat["pixel"][1] - base["pixel"][1]).abs().max() > 1e-3                 # kept: pixels see features
    pix = run({"pixel": z["pixel"] + torch.randn(2, 3, 32, 32, generator=g), "feature": z["feature"]})
    assert (pix["feature"][1] - base["feature"][1]).abs().max() > 1e-3              # features always see pixels
    if symmetric:
        assert torch.allclose(pix["feature"][0], base["feature"][0], atol=1e-6, rtol=0)
    else:
        assert (pix["feature"][0] - base["feature"][0]).abs().max() > 1e-3


def test_matches_official_vco_masked_forward():
    """Our null branch on our model reproduces the official masked forward of the dropped row."""
    fx = compact("vco_tiny")
    cfg = ModelConfig(image_size=256, patch_size=16, hidden_size=64, depth=3, num_heads=4, bottleneck_dim=16,
                      in_context_len=4, in_context_start=1, num_classes=10)
    streams = [pixel_stream(3), Stream("feature", kind="tokens", channels=768, default_init=True)]
    model = JiT(cfg, streams, attention_path="exact").eval()
    sd, layout = from_official(fx.weights())
    assert layout == "vco"
    model.load_state_dict(sd)
    u = structured_unconditional(fx["io/y"], fx["io/drop"], streams, num_classes=10)
    assert u.labels.tolist() == fx["io/y_drop"].tolist()
    with torch.no_grad():
        out = model({"pixel": fx["io/z"], "feature": fx["io/zs"]}, fx["io/t"], u.labels, blocked=u.blocked).x_hat
    fx.check(out["pixel"][0], "io/x_pred_drop/0", rtol=0, atol=1e-5)
    fx.check(out["feature"][0], "io/f_pred_drop/0", rtol=0, atol=1e-5)
    fx.check(out["pixel"][1], "io/x_pred/1", rtol=0, atol=1e-5)      # the undropped row: the conditional call's
    fx.check(out["feature"][1], "io/f_pred/1", rtol=0, atol=1e-5)
