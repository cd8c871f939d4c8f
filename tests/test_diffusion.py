"""Tests for jit_core.diffusion: t distribution, v-loss, Heun/Euler sampler, CFG interval and batching,
seeded sampling and the training objective with no plugins."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from jit_core.config import get_preset
from jit_core.diffusion import guidance_active, noise_scale_for, per_sample_v_loss, sample, sample_t, training_losses
from jit_core.model import JiT, JiTOutput, get_model_config
from jit_core.model.streams import PIXEL, pixel_stream
from jit_core.plugins import Plugins

NULL = 10  # JiT-T/4 has 10 classes; label 10 is the null class


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hook():
    return Plugins().hook


@pytest.fixture
def config():
    cfg = get_preset("test")
    assert cfg.model == "JiT-T/4"
    return cfg


def float32_grid(steps: int) -> list[float]:
    return torch.linspace(0, 1, steps + 1, dtype=torch.float32).tolist()


def perturbed_tiny(seed: int = 0) -> JiT:
    """JiT-T/4 with N(0, 0.02) added to every trainable tensor (so its output is not identically 0)."""
    torch.manual_seed(seed)
    model = JiT(get_model_config("JiT-T/4")).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


class ConstantModel(nn.Module):
    """A "network" whose x-prediction is always x*: the ideal denoiser for data that is the single point x*.

    Records the time and batch size of every call and the labels it saw.
    """

    def __init__(self, x_star: torch.Tensor):
        super().__init__()
        self.cfg = get_model_config("JiT-T/4")
        self.streams = [pixel_stream()]
        self.x_star = x_star
        self.calls: list[tuple[float, int, torch.Tensor]] = []

    def input_shape(self, stream):
        return (stream.channels, self.cfg.image_size, self.cfg.image_size)

    def forward(self, inputs, t, y, blocked=None, capture=()):
        z = inputs[PIXEL] if isinstance(inputs, dict) else inputs
        assert torch.all(t == t[0])
        self.calls.append((t[0].item(), z.shape[0], y.clone()))
        return JiTOutput({PIXEL: self.x_star.expand_as(z).clone()})


# =========================================================================== t distribution
def test_logit_normal_t_moments():
    t = sample_t(200_000, -0.8, 0.8, generator=torch.Generator().manual_seed(0)).double()
    assert 0 < t.min() and t.max() < 1
    n = torch.log(t / (1 - t))
    assert n.mean().item() == pytest.approx(-0.8, abs=0.01)
    assert n.std().item() == pytest.approx(0.8, abs=0.01)


# =========================================================================== v-loss
def test_v_loss_is_weighted_x_loss():
    g = torch.Generator().manual_seed(0)
    B = 64
    x = torch.rand(B, 3, 8, 8, generator=g) * 2 - 1
    x_pred = x + 0.1 * torch.randn(B, 3, 8, 8, generator=g)
    t = torch.rand(B, generator=g)
    t[:8] = torch.linspace(0.951, 0.9999, 8)  # the clamp binds here
    t[8] = 0.0
    tb = t.view(-1, 1, 1, 1)
    z = tb * x + (1 - tb) * torch.randn(B, 3, 8, 8, generator=g)
    got = per_sample_v_loss(x_pred, x, z, t, 0.05).double()
    mse = (x_pred.double() - x.double()).pow(2).flatten(1).mean(1)
    ref = mse / (1 - t.double()).clamp_min(0.05).pow(2)
    assert got.shape == (B,)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    # clamp binding: above t = 0.95 the weight is exactly 1 / 0.05^2 = 400
    torch.testing.assert_close(got[:8] / mse[:8], torch.full((8,), 400.0, dtype=torch.float64), rtol=1e-6, atol=0)
    assert (got[9:] / mse[9:] < 400).all()


# =========================================================================== Heun on an analytic field
def reference_sampler(x_pred_fn, z, steps, t_eps, euler_only=False, uncond_fn=None, scale=1.0,
                      interval=(0.1, 1.0)):
    """Independent transcription of the official loop: Heun on t_i = i / steps (float32 grid), last step
    Euler; v = (x_pred - z) / max(1 - t, t_eps); with ``uncond_fn``, v = v_u + w (v_c - v_u) where
    w = ``scale`` if t < t_hi and (t_lo == 0 or t > t_lo), else 1."""
    grid = float32_grid(steps)
    lo, hi = interval

    def v(zz, t):
        vc = (x_pred_fn(zz, t) - zz) / max(1.0 - t, t_eps)
        if uncond_fn is None:
            return vc
        vu = (uncond_fn(zz, t) - zz) / max(1.0 - t, t_eps)
        w = scale if (t < hi and (lo == 0 or t > lo)) else 1.0
        return vu + w * (vc - vu)

    for i in range(steps):
        t0, t1 = grid[i], grid[i + 1]
        dt = t1 - t0
        v1 = v(z, t0)
        if euler_only or i == steps - 1:
            z = z + dt * v1
        else:
            z_e = z + dt * v1
            z = z + dt * 0.5 * (v1 + v(z_e, t1))
    return z


def contraction_factor(steps, t_eps, euler_only=False):
    """Closed form for x_pred = x*: z_final - x* = F (z_0 - x*), F a product of per-step factors."""
    grid = float32_grid(steps)
    F = 1.0
    for i in range(steps):
        dt = grid[i + 1] - grid[i]
        d0, d1 = max(1 - grid[i], t_eps), max(1 - grid[i + 1], t_eps)
        if euler_only or i == steps - 1:
            F *= 1 - dt / d0
        else:
            F *= 1 - dt / 2 * (1 / d0 + (1 - dt / d0) / d1)
    return F


@pytest.mark.parametrize("method", ["heun", "euler"])
def test_sampler_lands_on_single_data_point_without_clamp(hook, config, method):
    """With the clamp off, z(t) = t x* + (1 - t) z0 is exact and both integrators land on x*."""
    config.diffusion.t_eps = 1e-9
    x_star = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = ConstantModel(x_star)
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = sample(model, torch.tensor([1, 2]), hook=hook, config=config, steps=50, method=method, cfg=1.0,
                 noise={PIXEL: noise})
    torch.testing.assert_close(out, x_star.expand_as(out), atol=1e-5, rtol=0)
    assert contraction_factor(50, 1e-9, method == "euler") == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("method", ["heun", "euler"])
def test_sampler_matches_official_loop_with_clamp(hook, config, method):
    euler = method == "euler"
    x_star = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = ConstantModel(x_star)
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = sample(model, torch.tensor([1, 2]), hook=hook, config=config, steps=50, method=method, cfg=1.0,
                 noise={PIXEL: noise})
    t_eps = config.diffusion.t_eps
    assert t_eps == 0.05
    ref = reference_sampler(lambda z, t: x_star.expand_as(z), noise.double(), 50, t_eps, euler)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    F = contraction_factor(50, t_eps, euler)
    torch.testing.assert_close(out.double(), x_star.double() + F * (noise.double() - x_star.double()),
                               atol=1e-5, rtol=0)
    assert F > 0.005  # the clamp keeps the sampler from landing on x* (40% of the last step is missed)
    assert (out - x_star).abs().max() > 1e-3

    grid = float32_grid(50)
    times = [c[0] for c in model.calls]
    if euler:
        assert times == grid[:50]
    else:
        # Heun: v(t_i), v(t_{i+1}) for i < 49, then one Euler evaluation at t_49 = 0.98; never at t = 1
        assert len(times) == 99
        assert times == [grid[0]] + [t for t in grid[1:50] for _ in range(2)]
        assert 1.0 not in times
    assert all(c[1] == 2 for c in model.calls)  # unguided: one pass of the real batch per evaluation


# =========================================================================== CFG interval
def test_guidance_interval_gating():
    grid = float32_grid(50)
    assert grid[5] == pytest.approx(0.1, abs=1e-7) and grid[5] < 0.1
    assert guidance_active(grid[5], (0.1, 1.0)) is False
    assert guidance_active(grid[6], (0.1, 1.0)) is True
    assert guidance_active(0.12, (0.1, 1.0)) is True
    assert guidance_active(0.98, (0.1, 1.0)) is True
    assert guidance_active(1.0, (0.1, 1.0)) is False
    assert guidance_active(1.5, (0.1, 1.0)) is False
    for t in (0.0, 0.05, 0.1, 0.5, 0.999):
        assert guidance_active(t, (0.0, 1.0)) is True
    assert guidance_active(1.0, (0.0, 1.0)) is False
    tt = torch.tensor(grid)
    mask = guidance_active(tt, (0.1, 1.0))
    assert mask.tolist() == [6 <= i <= 49 for i in range(51)]


@pytest.mark.parametrize("interval,expected", [((0.1, 1.0), 88), ((0.0, 1.0), 99)])
def test_guided_evaluation_count(hook, config, interval, expected):
    """Guided evaluations = evaluations with 0.1 < t < 1: t in {0.12, ..., 0.98}, each twice in Heun."""
    x_star = torch.zeros(1, 3, 32, 32)
    model = ConstantModel(x_star)
    labels = torch.tensor([3, 7])
    sample(model, labels, hook=hook, config=config, steps=50, cfg=2.0, interval=interval,
           generator=torch.Generator().manual_seed(0))
    assert len(model.calls) == 99
    guided = [c for c in model.calls if c[1] == 4]
    plain = [c for c in model.calls if c[1] == 2]
    assert len(guided) == expected and len(guided) + len(plain) == 99
    for t, _, y in guided:
        assert guidance_active(t, interval)
        assert y.tolist() == [3, 7, NULL, NULL]  # conditional half then the null class
    for t, _, y in plain:
        assert not guidance_active(t, interval) and y.tolist() == [3, 7]
    if interval == (0.1, 1.0):
        assert min(c[0] for c in guided) == pytest.approx(0.12)
        assert max(c[0] for c in plain) == pytest.approx(0.1, abs=1e-7)


def official_guided_times(steps: int, interval: tuple[float, float]) -> list[tuple[float, bool]]:
    """(t, guided) of every velocity evaluation of the official Heun sampler (JiT, arXiv 2511.13720 §3 and its
    released denoiser): the grid is ``torch.linspace(0, 1, steps + 1)`` in float32; Heun steps evaluate at
    t_i and t_{i+1}, the last step (Euler) at t_{steps-1} only; the CFG scale applies where the float32 time
    tensor satisfies ``(t < high) & ((low == 0) | (t > low))`` (tensor-scalar comparisons stay in float32)."""
    grid = torch.linspace(0.0, 1.0, steps + 1)
    times = [grid[i // 2 + i % 2] for i in range(2 * (steps - 1))] + [grid[steps - 1]]
    low, high = interval
    return [(t.item(), bool((t < high) & ((low == 0) | (t > low)))) for t in times]


@pytest.mark.parametrize("interval", [(0.1, 1.0), (0.0, 0.7)])
@pytest.mark.parametrize("steps", [10, 20, 40, 50])
def test_guided_evaluations_follow_the_official_float32_rule(hook, config, steps, interval):
    """Which evaluations are guided, at step counts whose float32 grid holds a point equal to an end of the
    interval (10, 20, 40: t = float32(0.1) and float32(0.7)), and at the recipe's 50 (0.1 is 0.09999999 there)."""
    model = ConstantModel(torch.zeros(1, 3, 32, 32))
    sample(model, torch.tensor([3, 7]), hook=hook, config=config, steps=steps, cfg=2.0, interval=interval,
           generator=torch.Generator().manual_seed(0))
    ours = [(t, batch == 4) for t, batch, _ in model.calls]
    assert ours == official_guided_times(steps, interval)
    if steps in (10, 20, 40):   # the grid point equal to float32(an end) is not guided by the official code
        end = 0.1 if interval[0] else 0.7
        at_end = [g for t, g in ours if t == torch.tensor(end).item()]
        assert at_end and not any(at_end)


# =========================================================================== CFG on a real network
@pytest.fixture(scope="module")
def tiny_model():
    return perturbed_tiny()


@pytest.mark.parametrize("interval", [(0.0, 1.0), (0.3, 1.0)])
def test_batched_cfg_equals_separate_passes(hook, config, tiny_model, interval):
    labels = torch.tensor([0, 5, 9])
    kwargs = {"hook": hook, "config": config, "steps": 6, "cfg": 3.0, "interval": interval}
    a = sample(tiny_model, labels, batched_cfg=True, generator=torch.Generator().manual_seed(0), **kwargs)
    b = sample(tiny_model, labels, batched_cfg=False, generator=torch.Generator().manual_seed(0), **kwargs)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # guidance really acts: scale 3 differs from the conditional-only result
    c = sample(tiny_model, labels, generator=torch.Generator().manual_seed(0), **{**kwargs, "cfg": 1.0})
    assert (a - c).abs().max() > 1e-3


@pytest.mark.parametrize("interval", [(0.0, 1.0), (0.3, 1.0)])
def test_guided_sampler_matches_reference(hook, config, tiny_model, interval):
    """CFG in velocity space, v = v_u + w (v_c - v_u), gated by the interval, against the reference loop."""
    labels = torch.tensor([0, 5, 9])
    noise = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    out = sample(tiny_model, labels, hook=hook, config=config, steps=6, cfg=3.0, interval=interval,
                 noise={PIXEL: noise})

    def net(y):
        def fn(z, t):
            with torch.no_grad():
                return tiny_model(z, torch.full((3,), t), y).pixel
        return fn

    ref = reference_sampler(net(labels), noise, 6, config.diffusion.t_eps, uncond_fn=net(torch.full((3,), NULL)),
                            scale=3.0, interval=interval)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    unguided = reference_sampler(net(labels), noise, 6, config.diffusion.t_eps)
    assert (ref - unguided).abs().max() > 1e-3


def test_cfg_one_equals_conditional_only_sampler(hook, config, tiny_model):
    labels = torch.tensor([0, 5, 9])
    noise = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    out = sample(tiny_model, labels, hook=hook, config=config, steps=6, cfg=1.0, interval=(0.0, 1.0),
                 noise={PIXEL: noise})

    def cond(z, t):
        with torch.no_grad():
            return tiny_model(z, torch.full((3,), t), labels).pixel

    ref = reference_sampler(cond, noise, 6, config.diffusion.t_eps)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # the sampler's initial noise is scaled by the stream's noise scale and starts the ODE
    assert (out - noise).abs().max() > 1e-2


def test_seeded_sampling_is_deterministic(hook, config, tiny_model):
    labels = torch.tensor([1, 2])
    kwargs = {"hook": hook, "config": config, "steps": 3, "cfg": 2.0, "interval": (0.0, 1.0)}
    a = sample(tiny_model, labels, generator=torch.Generator().manual_seed(123), **kwargs)
    b = sample(tiny_model, labels, generator=torch.Generator().manual_seed(123), **kwargs)
    c = sample(tiny_model, labels, generator=torch.Generator().manual_seed(124), **kwargs)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1


# =========================================================================== training objective
class RecordingModel(nn.Module):
    """Returns a fixed function of its input and records what training_losses fed it."""

    def __init__(self):
        super().__init__()
        self.streams = [pixel_stream()]
        self.cfg = SimpleNamespace(num_classes=NULL)     # the null class the core gives dropped samples
        self.seen = {}

    def forward(self, inputs, t, y, blocked=None, capture=()):
        self.seen = {"z": inputs[PIXEL].clone(), "t": t.clone(), "y": y.clone(), "blocked": blocked}
        return JiTOutput({PIXEL: 0.5 * inputs[PIXEL]})


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_label_drop_probability(hook, config, p):
    config.diffusion.label_drop_prob = p
    model = RecordingModel()
    B = 20_000
    labels = torch.randint(0, NULL, (B,), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    training_losses(model, model.streams, torch.zeros(B, 3, 2, 2), labels, config, hook)
    y = model.seen["y"]
    dropped = y == NULL
    rate = dropped.float().mean().item()
    assert rate == pytest.approx(p, abs=4 * (p * (1 - p) / B) ** 0.5)
    assert torch.equal(y[~dropped], labels[~dropped])  # kept labels are unchanged
    assert model.seen["blocked"] is None


@pytest.mark.parametrize("P_mean,P_std", [(-0.8, 0.8), (3.0, 1.0)])
def test_pixel_loss_is_mean_of_per_sample_v_losses(hook, config, P_mean, P_std):
    """(3.0, 1.0) puts about half the samples above t = 0.95, where the max(1 - t, 0.05) clamp binds."""
    config.diffusion.P_mean, config.diffusion.P_std = P_mean, P_std
    model = RecordingModel()
    g = torch.Generator().manual_seed(0)
    B = 512
    images = torch.rand(B, 3, 4, 4, generator=g) * 2 - 1
    labels = torch.randint(0, NULL, (B,), generator=g)
    torch.manual_seed(1)
    total, losses = training_losses(model, model.streams, images, labels, config, hook)
    assert set(losses) == {PIXEL}
    z, t = model.seen["z"].double(), model.seen["t"].double()
    x, x_pred = images.double(), 0.5 * z
    per = (x_pred - x).pow(2).flatten(1).mean(1) / (1 - t).clamp_min(0.05).pow(2)
    torch.testing.assert_close(losses[PIXEL].double(), per.mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(total, losses[PIXEL])
    # z = t x + (1 - t) e with e ~ N(0, 1) (noise scale 1 in this config)
    tb = t.view(-1, 1, 1, 1)
    keep = t < 0.9
    e = ((z - tb * x) / (1 - tb))[keep]
    assert e.mean().item() == pytest.approx(0.0, abs=0.03) and e.std().item() == pytest.approx(1.0, abs=0.03)
    n = torch.log(t / (1 - t))
    assert n.mean().item() == pytest.approx(P_mean, abs=0.15) and n.std().item() == pytest.approx(P_std, abs=0.1)
    if P_mean > 0:
        assert (t > 0.95).double().mean() > 0.3


def test_gradients_reach_every_trainable_parameter(hook, config):
    model = perturbed_tiny(seed=3).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
    labels = torch.randint(0, NULL, (8,), generator=g)
    torch.manual_seed(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        total, _ = training_losses(model, model.streams, images, labels, config, hook)
        assert torch.isfinite(total)
        total.backward()
        opt.step()
        losses.append(total.item())
    for name, p in model.named_parameters():
        if name == "pos_embed":
            assert not p.requires_grad and p.grad is None
            assert torch.equal(p, before[name])
            continue
        assert p.requires_grad, name
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
        assert not torch.equal(p, before[name]), name
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["pos_embed"]


def test_config_is_a_dataclass_copy(config):
    # the per-test config fixture is fresh, so mutating it in one test does not leak into another
    assert dataclasses.is_dataclass(config) and config.diffusion.label_drop_prob == 0.1
    assert config.diffusion.t_eps == 0.05


def test_noise_scale_in_training_and_sampling(hook, config):
    """JiT's noise scale is image_size / 256; a stream's ``noise_scale`` sets the std of e in both the
    training noise and the sampler's starting noise."""
    assert noise_scale_for(256) == 1.0 and noise_scale_for(512) == 2.0 and noise_scale_for(512, 1.5) == 1.5
    model = RecordingModel()
    model.streams = [pixel_stream(noise_scale=2.0)]
    config.diffusion.P_mean = -3.0  # mostly noisy samples, so e is well measured
    images = torch.rand(256, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(0)
    training_losses(model, model.streams, images, torch.zeros(256, dtype=torch.long), config, hook)
    z, t = model.seen["z"].double(), model.seen["t"].double().view(-1, 1, 1, 1)
    e = (z - t * images.double()) / (1 - t)
    assert e.std().item() == pytest.approx(2.0, abs=0.05)

    x_star = torch.zeros(1, 3, 32, 32)
    const = ConstantModel(x_star)
    const.streams = [pixel_stream(noise_scale=2.0)]
    out = sample(const, torch.tensor([1, 2]), hook=hook, config=config, steps=50, cfg=1.0,
                 generator=torch.Generator().manual_seed(0))
    z0 = out.double() / contraction_factor(50, config.diffusion.t_eps)  # x* = 0: out = F z0 (F ~ 0.01)
    ref = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).double() * 2.0
    torch.testing.assert_close(z0, ref, atol=1e-4, rtol=0)


class _Predictions(dict):
    """x-hat per stream, read as a dict or as the model output's ``x_hat``."""

    @property
    def x_hat(self) -> dict:
        return self


class TwoStreamConstant(nn.Module):
    """Predicts the constants x* (pixels) and f* (a ``tokens`` stream ``s``) whatever the input."""

    def __init__(self, stream):
        super().__init__()
        self.cfg = get_model_config("JiT-T/4")
        self.streams = [pixel_stream(), stream]
        self.x_star, self.f_star = torch.zeros(1, 3, 32, 32), torch.full((1, 64, 2), 0.5)

    def input_shape(self, stream):
        return tuple((self.x_star if stream.name == PIXEL else self.f_star).shape[1:])

    def forward(self, inputs, t, y, blocked=None, capture=()):
        return _Predictions({PIXEL: self.x_star.expand_as(inputs[PIXEL]).clone(),
                             "s": self.f_star.expand_as(inputs["s"]).clone()})


@pytest.mark.parametrize("shift_prediction", [True, False])
def test_sampler_steps_a_shifted_stream_with_its_prediction_time(hook, config, shift_prediction):
    """A stream with time_shift a: Euler steps of Δt_s = t_s(t_{i+1}) - t_s(t_i), velocity (f* - z) / max(1 - τ, t_eps)
    with τ = t_s, or τ = t (the shared time) when ``shift_prediction`` is off (V-Co's released run_b sampler)."""
    from jit_core.model.streams import Stream
    stream = Stream("s", channels=2, time_shift=0.5, shift_prediction=shift_prediction)
    model = TwoStreamConstant(stream)
    noise = {PIXEL: torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
             "s": torch.randn(2, 64, 2, generator=torch.Generator().manual_seed(1))}
    out = sample(model, torch.tensor([1, 2]), hook=hook, config=config, steps=4, method="euler", noise=noise,
                 return_all_streams=True)
    grid = torch.linspace(0, 1, 5)
    z = noise["s"].clone()
    for i in range(4):
        t0, t1 = grid[i], grid[i + 1]
        tau = stream.shift(t0) if shift_prediction else t0
        z = z + (stream.shift(t1) - stream.shift(t0)) * (model.f_star - z) / (1 - tau).clamp_min(0.05)
    torch.testing.assert_close(out["s"], z)
