"""The ``jit_guidance_terms`` hook: a plugin's guidance beside CFG, v = v_cfg + w (v(x, z) - v(x, null z)),
checked against the formula computed by hand from the network's forwards (one Euler step from t = 0)."""
from __future__ import annotations

import pytest
import torch

from jit_core import Stream, hookimpl
from jit_core.diffusion import GuidanceTerm, sample
from jit_core.errors import PluginError
from jit_core.testing import tiny_model


class Guider:
    """A neutral test plugin: a 2-channel token stream ``side`` and one guidance term against its null."""

    def __init__(self, weight: float, inputs=None):
        self.__name__ = "guider"
        self.weight, self.inputs = weight, inputs

    @hookimpl
    def jit_streams(self, model_config):
        return [Stream("side", kind="tokens", channels=2, target=lambda images: images.new_zeros(len(images), 64, 2))]

    @hookimpl
    def jit_guidance_terms(self, streams, scale):
        return [GuidanceTerm(self.weight, {"side": 0.0} if self.inputs is None else self.inputs)]


def _setup(weight, inputs=None):
    tm = tiny_model(extra_plugins=[Guider(weight, inputs)])
    g = torch.Generator().manual_seed(0)
    noise = {s.name: torch.randn((3, *tm.model.input_shape(s)), generator=g) for s in tm.model.streams}
    return tm, torch.tensor([1, 4, 7]), noise


def _euler(tm, labels, noise, cfg, interval=(0.0, 1.0)):
    return sample(tm.model, labels, hook=tm.plugins.hook, config=tm.config, steps=1, method="euler", cfg=cfg,
                  interval=interval, noise={k: v.clone() for k, v in noise.items()}, return_all_streams=True)


@torch.no_grad()
def _forward(tm, z, labels):
    t = torch.zeros(len(labels))
    return {k: v - z[k] for k, v in tm.model(z, t, labels).x_hat.items()}   # v = (x_hat - z) / (1 - t), t = 0


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_the_term_is_added_to_cfg_as_computed_by_hand(cfg):
    w = 0.7
    tm, labels, noise = _setup(w)
    out = _euler(tm, labels, noise, cfg)
    v_c = _forward(tm, noise, labels)
    v_null = _forward(tm, {**noise, "side": torch.zeros_like(noise["side"])}, labels)
    v_u = _forward(tm, noise, torch.full_like(labels, tm.model.cfg.num_classes))
    v_cfg = {k: v_u[k] + cfg * (v_c[k] - v_u[k]) for k in v_c}
    pixel = noise["pixel"] + v_cfg["pixel"] + w * (v_c["pixel"] - v_null["pixel"])
    torch.testing.assert_close(out["pixel"], pixel, rtol=1e-5, atol=1e-5)
    # the replaced stream's own velocity is CFG's only: its prediction from a null input is not trained
    torch.testing.assert_close(out["side"], noise["side"] + v_cfg["side"], rtol=1e-5, atol=1e-5)
    assert (out["pixel"] - (noise["pixel"] + v_cfg["pixel"])).abs().max() > 1e-3   # the term does something


def test_weight_zero_is_plain_sampling_and_a_foreign_stream_is_refused():
    tm, labels, noise = _setup(0.0)
    plain = sample(tm.model, labels, hook=tm.plugins.hook, config=tm.config, steps=1, method="euler", cfg=2.0,
                   interval=(0.0, 1.0), noise={k: v.clone() for k, v in noise.items()})
    v_c, v_u = _forward(tm, noise, labels), _forward(tm, noise, torch.full_like(labels, tm.model.cfg.num_classes))
    torch.testing.assert_close(plain, noise["pixel"] + v_u["pixel"] + 2.0 * (v_c["pixel"] - v_u["pixel"]),
                               rtol=1e-5, atol=1e-5)
    tm, labels, noise = _setup(1.0, inputs={"pixel": 0.0})
    with pytest.raises(PluginError, match="plugin 'guider': a guidance term must replace inputs of its own streams"):
        _euler(tm, labels, noise, 1.0)
