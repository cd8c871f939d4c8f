"""Streams with their own token count: a coarser grid (``Stream.grid``) and global tokens (``Stream.tokens``)
attending jointly with the pixel stream; their position tables, shapes, training and isolation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jit_core.config import get_preset
from jit_core.diffusion import sample, training_losses
from jit_core.model import JiT, Stream, StreamGroups, get_model_config, pixel_stream
from jit_core.model.layers import cell_centres, rope_tables, sincos_1d, sincos_2d
from jit_core.plugins import Plugins
from jit_core.testing import nontrivial

CFG = get_model_config("JiT-T/4")          # 32 px, patch 4: an 8 x 8 pixel grid, 4 in-context tokens
COARSE, GLOBAL = "coarse", "global"

pytestmark = pytest.mark.usefixtures("one_thread")


def coarse_tokens(images: torch.Tensor) -> torch.Tensor:
    """(B, C, 32, 32) -> (B, 16, C): the image averaged over each cell of a 4 x 4 grid, row-major."""
    return F.avg_pool2d(images, 8).flatten(2).transpose(1, 2)


def global_token(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, C): the mean colour."""
    return images.mean((2, 3))[:, None]


def streams():
    return [pixel_stream(), Stream(COARSE, "tokens", 3, grid=4, target=coarse_tokens),
            Stream(GLOBAL, "tokens", 3, tokens=1, target=global_token)]


def inputs(B: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return ({"pixel": torch.randn(B, 3, 32, 32, generator=g), COARSE: torch.randn(B, 16, 3, generator=g),
             GLOBAL: torch.randn(B, 1, 3, generator=g)},
            torch.rand(B, generator=g), torch.randint(0, 11, (B,), generator=g))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return nontrivial(JiT(CFG, streams()), 0.05).eval()


def test_shapes(model):
    x, t, y = inputs()
    with torch.no_grad():
        out = model(x, t, y, capture=[0, 2])
    assert out.x_hat["pixel"].shape == (3, 3, 32, 32)
    assert out.x_hat[COARSE].shape == (3, 16, 3) and out.x_hat[GLOBAL].shape == (3, 1, 3)
    assert {k: v.shape for k, v in out.hidden[2].items()} == {
        "pixel": (3, 64, 64), COARSE: (3, 16, 64), GLOBAL: (3, 1, 64)}   # in-context tokens dropped
    assert [model.input_shape(s) for s in model.streams] == [(3, 32, 32), (16, 3), (1, 3)]
    with pytest.raises(ValueError, match=r"coarse.*\(3, 64, 3\).*\(B, 16, 3\)"):
        model({**x, COARSE: torch.zeros(3, 64, 3)}, t, y)


def test_position_tables():
    """A coarse grid sits at its cells' centres on the pixel grid; global tokens are not rotated and get a
    1D sin-cos table over their index; a stream on a grid the size of the pixel grid gets the pixel tables."""
    assert cell_centres(4, 8).tolist() == [0.5, 2.5, 4.5, 6.5]
    assert np.array_equal(cell_centres(8, 8), np.arange(8.0))
    m = JiT(CFG, streams())
    K, d, h = CFG.in_context_len, CFG.head_dim, CFG.hidden_size
    coarse, glob = m.positions[COARSE], m.positions[GLOBAL]
    cos, sin = rope_tables(d, 4, positions=np.array([0.5, 2.5, 4.5, 6.5]))
    assert torch.equal(coarse.rope_cos, cos) and torch.equal(coarse.rope_sin, sin)
    # the row-0 / column-1 token of the coarse grid has the angles of pixel-grid position (0.5, 2.5)
    half = d // 2
    freqs = 1.0 / 10000 ** (torch.arange(0, half, 2, dtype=torch.float32) / half)
    torch.testing.assert_close(coarse.rope_cos[1, :half:2], torch.cos(0.5 * freqs))
    torch.testing.assert_close(coarse.rope_cos[1, half::2], torch.cos(2.5 * freqs))
    assert torch.equal(coarse.sincos[0], sincos_2d(h, 4, cell_centres(4, 8)))
    assert torch.equal(coarse.rope_ic_cos[:K], torch.ones(K, d)) and torch.equal(coarse.rope_ic_cos[K:], cos)
    assert torch.equal(glob.rope_cos, torch.ones(1, d)) and torch.equal(glob.rope_sin, torch.zeros(1, d))
    assert torch.equal(glob.sincos[0], sincos_1d(h, 1))
    assert not any(name.startswith("positions.") for name in m.state_dict())   # not saved: checkpoints unchanged
    assert m.num_params() == JiT(CFG, [pixel_stream(), Stream(COARSE, "tokens", 3), Stream(GLOBAL, "tokens", 3)]).num_params()

    torch.manual_seed(0)
    own = nontrivial(JiT(CFG, [pixel_stream(), Stream(COARSE, "tokens", 3, grid=8)]), 0.05).eval()
    pixel_grid = JiT(CFG, [pixel_stream(), Stream(COARSE, "tokens", 3)]).eval()
    pixel_grid.load_state_dict(own.state_dict())
    g = torch.Generator().manual_seed(2)
    x = {"pixel": torch.randn(2, 3, 32, 32, generator=g), COARSE: torch.randn(2, 64, 3, generator=g)}
    t = torch.rand(2, generator=g)
    with torch.no_grad():
        a, b = (net(x, t, torch.tensor([1, 2])).x_hat for net in (own, pixel_grid))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("attention", ["exact", "fast"])
def test_pixels_blocked_from_the_streams_equal_the_pixel_only_model(model, attention):
    """Pixel queries blocked from both streams' keys: the pixel output is the pixel-only JiT's with the same
    weights; unblocked, the streams change it."""
    pixel_only = JiT(CFG).eval()
    pixel_only.load_state_dict({k: v for k, v in model.state_dict().items() if k in pixel_only.state_dict()})
    x, t, y = inputs()
    blocked = torch.zeros(3, 3, 3, dtype=torch.bool)
    blocked[:, 0, 1:] = True
    model.set_attention(attention)
    try:
        with torch.no_grad():
            ref = pixel_only.set_attention(attention)({"pixel": x["pixel"]}, t, y).pixel
            alone = model(x, t, y, blocked=blocked).pixel
            grouped = model(x, t, y, blocked=StreamGroups(blocked)).pixel    # the sampler's form, either path
            joint = model(x, t, y).pixel
    finally:
        model.set_attention("exact")
    torch.testing.assert_close(alone, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(grouped, ref, atol=1e-6, rtol=0)
    assert (joint - ref).abs().max() > 1e-3


def test_coarse_and_global_streams_train():
    """A few AdamW steps of the co-denoising objective: every stream's own weights get gradients, the
    losses are finite and fall on a fixed batch; sampling returns every stream in its shape."""
    torch.manual_seed(0)
    model = nontrivial(JiT(CFG, streams()), 0.02)
    hook, config = Plugins().hook, get_preset("test")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
    labels = torch.randint(0, 10, (8,), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(6):
        torch.manual_seed(step)                 # the same t and noise each step: a fixed objective
        total, terms = training_losses(model, model.streams, images, labels, config, hook)
        opt.zero_grad()
        total.backward()
        if step == 0:
            for name in (COARSE, GLOBAL):
                own = [(k, p) for k, p in model.named_parameters()
                       if f".{name}." in k or k.startswith((f"embedders.{name}.", f"heads.{name}."))]
                assert len(own) > 20
                assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in own), \
                    [k for k, p in own if p.grad is None or not p.grad.abs().sum() > 0]
        opt.step()
        assert set(terms) == {"pixel", COARSE, GLOBAL} and all(torch.isfinite(v) for v in terms.values())
        losses.append(float(total.detach()))
    assert losses[-1] < losses[0]
    model.eval()
    out = sample(model, torch.tensor([1, 2]), hook=hook, config=config, steps=3, cfg=2.0, return_all_streams=True,
                 generator=torch.Generator().manual_seed(0))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"pixel": (2, 3, 32, 32), COARSE: (2, 16, 3), GLOBAL: (2, 1, 3)}


@pytest.mark.parametrize("kwargs,match", [
    ({"kind": "patch", "grid": 4}, "patch stream lies on the pixel grid"),
    ({"grid": 4, "tokens": 2}, "not both"),
    ({"grid": 0}, "positive integer"),
    ({"tokens": 1.5}, "positive integer"),
])
def test_bad_geometry_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JiT(CFG, [pixel_stream(), Stream("extra", **{"kind": "tokens", "channels": 3, **kwargs})])
