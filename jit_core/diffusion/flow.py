"""Flow matching as in JiT: t = 1 is clean, x-prediction, v-loss, Heun/Euler sampling with CFG.

    z = t x + (1 - t) e,   e ~ N(0, sigma^2 I),   t = sigmoid(N(P_mean, P_std^2))
    v = (x - z) / max(1 - t, t_eps),   v_hat = (net(z, t, y) - z) / max(1 - t, t_eps)
    loss = E |v - v_hat|^2   (an x-loss weighted by max(1 - t, t_eps)^-2)
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from jit_core.config import SAMPLE_METHODS
from jit_core.diffusion.guidance import apply_terms, guidance_terms
from jit_core.diffusion.unconditional import Unconditional, own_drops, unconditional_form
from jit_core.hookcalls import call_each, guarded
from jit_core.model.attention import StreamGroups
from jit_core.model.streams import PIXEL, Stream
from jit_core.rng import plugin_generator


@dataclass
class StepState:
    """Everything a ``jit_loss_terms`` implementation may read about the current training step."""

    config: Any
    model: torch.nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    t: torch.Tensor
    drop: torch.Tensor
    uncond: Unconditional
    targets: dict[str, torch.Tensor]
    noisy: dict[str, torch.Tensor]
    preds: dict[str, torch.Tensor]
    hidden: dict
    aux: Any
    losses: dict[str, torch.Tensor]
    values: dict[str, Any] = field(default_factory=dict)   # what streams' clean() left for loss terms (e.g. f+)
    global_step: int = 0            # optimizer steps done before this one
    rank: int = 0
    training: bool = True


def noise_scale_for(image_size: int, configured: Optional[float] = None) -> float:
    """JiT's noise scale: image_size / 256 (1 at 256 px, 2 at 512 px) unless configured."""
    return configured if configured is not None else image_size / 256


def logit_normal_t(normals: torch.Tensor, P_mean: float, P_std: float) -> torch.Tensor:
    """The flow time of standard normals ``normals``: sigmoid(normals * P_std + P_mean)."""
    return torch.sigmoid(normals * P_std + P_mean)


def sample_t(n: int, P_mean: float, P_std: float, device=None, generator=None) -> torch.Tensor:
    """Logit-normal flow time: sigmoid of N(P_mean, P_std^2)."""
    return logit_normal_t(torch.randn(n, device=device, generator=generator), P_mean, P_std)


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def add_noise(x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    tb = _bcast(t, x)
    return tb * x + (1 - tb) * noise


def velocity(x_pred: torch.Tensor, z: torch.Tensor, t: torch.Tensor, t_eps: float) -> torch.Tensor:
    """v = (x_pred - z) / max(1 - t, t_eps)."""
    return (x_pred - z) / _bcast((1 - t).clamp_min(t_eps), z)


def per_sample_v_loss(x_pred, x, z, t, t_eps, t_pred: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B,) mean over all non-batch dims of (v - v_hat)^2; ``t_pred``: the prediction's time if not ``t``."""
    t_pred = t if t_pred is None else t_pred
    diff = velocity(x_pred.float(), z.float(), t_pred, t_eps) - velocity(x.float(), z.float(), t, t_eps)
    return diff.pow(2).flatten(1).mean(1)


def masked_mean(per_sample: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over the samples with mask 1; exactly 0 when no sample counts."""
    if mask is None:
        return per_sample.mean()
    mask = mask.to(per_sample.dtype)
    return (per_sample * mask).sum() / mask.sum().clamp_min(1.0)


# ----------------------------------------------------------------------------------- training step
def step_generators(seed: int, global_step: int, rank: int, device) -> Callable[..., torch.Generator]:
    """``generator_for(plugin, purpose="step")``: the seeded generator a plugin gets in this step (see
    :mod:`jit_core.rng`), one per (plugin, purpose) for the whole step: the plugin's hooks in this step draw
    from one stream of numbers, in the order they run."""
    made: dict[tuple[str, str], torch.Generator] = {}

    def generator_for(plugin: str, purpose: str = "step") -> torch.Generator:
        if (plugin, purpose) not in made:
            made[(plugin, purpose)] = plugin_generator(seed, global_step, plugin, rank, purpose, device)
        return made[(plugin, purpose)]
    return generator_for


def training_losses(model, streams: Sequence[Stream], images: torch.Tensor, labels: torch.Tensor, config,
                    hook, aux=None, capture: Sequence[int] = (), drop: Optional[torch.Tensor] = None,
                    global_step: int = 0, rank: int = 0, t: Optional[torch.Tensor] = None,
                    noise: Optional[dict[str, torch.Tensor]] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One JiT (or co-denoising) objective evaluation. Returns (total loss, named terms).

    The step's random draws, each drawn here unless given (the official-parity tests give the official run's):
    ``t`` the (B,) flow times (:func:`sample_t`), ``noise`` standard normals per stream name (scaled here by the
    stream's ``noise_scale``), ``drop`` the (B,) bool samples made unconditional (Bernoulli(``label_drop_prob``)).
    ``global_step`` and ``rank`` seed the plugins' generators and the streams' own drops.
    """
    d = config.diffusion
    B, device = images.shape[0], images.device
    values: dict[str, Any] = {}
    with torch.no_grad():   # pixel: the images as they are; a plugin's stream: its own clean() and normalize()
        targets = {s.name: guarded(s.plugin or "jit_core", f"stream {s.name!r}", lambda s=s: s.normalize(s.clean(images, values)))
                   for s in streams}
    if t is None:
        t = sample_t(B, d.P_mean, d.P_std, device)
    ts = {s.name: s.shift(t) for s in streams}
    noise = noise or {}
    noisy = {s.name: add_noise(targets[s.name], ts[s.name],
                               (noise[s.name] if s.name in noise else torch.randn_like(targets[s.name])) * s.noise_scale)
             for s in streams}
    if drop is None:
        drop = torch.rand(B, device=device) < d.label_drop_prob
    drop = drop.to(device=device, dtype=torch.bool)
    generator_for = step_generators(config.train.seed, global_step, rank, device)
    uncond = unconditional_form(hook, labels, drop, streams, config, model.cfg.num_classes, training=True,
                                drops=own_drops(streams, B, generator_for, device), generator_for=generator_for)
    out = model(uncond.inputs(noisy), t, uncond.labels, blocked=uncond.blocked, capture=capture)
    preds, hidden = out.x_hat, out.hidden
    losses = {}
    total = torch.zeros((), device=device)
    for s in streams:
        per = per_sample_v_loss(preds[s.name], targets[s.name], noisy[s.name], ts[s.name], d.t_eps,
                                s.prediction_time(t))
        losses[s.name] = masked_mean(per, uncond.loss_masks.get(s.name))
        total = total + s.loss_weight * losses[s.name]
    step = StepState(config=config, model=model, images=images, labels=labels, t=t, drop=drop, uncond=uncond,
                     targets=targets, noisy=noisy, preds=preds, hidden=hidden, aux=aux, losses=dict(losses),
                     values=values, global_step=global_step, rank=rank)
    owner = {s.name: f"stream {s.name!r}" for s in streams}
    for plugin, terms in call_each(hook.jit_loss_terms, per_plugin=lambda name: {"generator": generator_for(name)},
                                   step=step):
        for name, value in terms.items():
            if name in losses:
                raise ValueError(f"loss term {name!r} of plugin {plugin!r} clashes with {owner[name]}; rename it")
            losses[name], owner[name] = value, f"the term of plugin {plugin!r}"
            total = total + value
    return total, losses


# ----------------------------------------------------------------------------------- sampling
def guidance_scales(streams: Sequence[Stream], scale: float) -> dict[str, float]:
    """The CFG scale of every stream for the pixel scale ``scale`` (each stream's ``guidance_scale``)."""
    return {s.name: float(s.guidance_scale(scale)) for s in streams}


def guidance_active(t: float | torch.Tensor, interval: tuple[float, float]) -> torch.Tensor | bool:
    """JiT's CFG interval rule: guide iff t < t_hi and (t_lo == 0 or t > t_lo).

    Compared as the official sampler compares its float32 time grid with the interval: in float32 (a Python
    float ``t`` is rounded to float32 first). It decides grid points that equal an end of the interval: at
    10 steps the grid point float32(0.1) is not > 0.1 in float32, though it is in float64, so it is not guided.
    """
    lo, hi = interval
    tt = t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float32)
    mask = (tt < hi) & ((tt > lo) | (lo == 0))
    return mask if isinstance(t, torch.Tensor) else bool(mask)


@torch.no_grad()
def sample(model, labels: torch.Tensor, *, hook, config, steps: int = 50, method: str = "heun",
           cfg: float = 1.0, interval: tuple[float, float] = (0.1, 1.0), generator: Optional[torch.Generator] = None,
           batched_cfg: bool = True, noise: Optional[dict[str, torch.Tensor]] = None,
           return_all_streams: bool = False):
    """Generate images for ``labels`` by integrating from t=0 (noise) to t=1.

    Heun: ``steps - 1`` Heun steps on the grid ``t_i = i / steps`` and one final Euler step
    (JiT: 50 -> 99 velocity evaluations). Every evaluation is guided (``cfg`` per stream via each
    stream's ``guidance_scale``) inside ``interval``; the conditional and unconditional passes run
    as one batched forward (``batched_cfg=False`` runs them separately, for checking). Plugins' guidance
    terms (``jit_guidance_terms``: v += w (v_cond - v_null), diffusion/guidance.py) apply at every evaluation.
    Initial noise is drawn on the CPU from ``generator`` so results do not depend on the device.
    """
    if method not in SAMPLE_METHODS:
        raise ValueError(f"unknown sampler {method!r}: use {' or '.join(SAMPLE_METHODS)}")
    streams = model.streams
    B, device = labels.shape[0], labels.device
    mc = model.cfg
    if noise is None:
        noise = {s.name: torch.randn((B, *model.input_shape(s)), generator=generator) * s.noise_scale for s in streams}
    z = {k: v.to(device=device, dtype=torch.float32) for k, v in noise.items()}
    scales = guidance_scales(streams, cfg)
    guided = any(w != 1.0 for w in scales.values())
    # the unconditional half of CFG: every sample dropped (own drops too); plugins get fixed-seed generators
    uncond = unconditional_form(hook, labels, torch.ones_like(labels, dtype=torch.bool), streams, config,
                                mc.num_classes, training=False,
                                generator_for=step_generators(config.train.seed, -1, 0, "cpu"))
    terms = guidance_terms(hook, streams, cfg)     # plugins' guidance beside CFG (jit_guidance_terms)
    t_eps = config.diffusion.t_eps
    # Decided once per call, not per step: the blocked matrix of the guided forward, grouped for the fast
    # attention path (grouping reads it on the host: the call's only sync), the time grid and its steps, and
    # where CFG applies. The steps then queue device work only.
    uncond_blocked = batched_blocked = None
    if guided and uncond.blocked is not None:
        if batched_cfg:      # [conditional | unconditional]: nothing blocked in the first half
            batched_blocked = grouped_for(model, torch.cat([torch.zeros_like(uncond.blocked), uncond.blocked]))
        else:
            uncond_blocked = grouped_for(model, uncond.blocked)
    batched_labels = torch.cat([labels, uncond.labels])
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float32)       # on the host: t_i = i / steps
    times = grid.tolist()
    deltas = [{s.name: float(s.shift(grid[i + 1]) - s.shift(grid[i])) for s in streams} for i in range(steps)]
    guide_at = {t: guided and guidance_active(t, interval) for t in times}   # t from the float32 grid

    def x_pred(zz, tt, yy, blocked):
        return model(zz, tt, yy, blocked=blocked).x_hat

    def cond_vel(zz: dict, inputs: dict, tt: torch.Tensor) -> dict:
        out = x_pred(inputs, tt, labels, None)
        return {s.name: velocity(out[s.name].float(), zz[s.name], s.prediction_time(tt), t_eps) for s in streams}

    def vel(zz: dict, t: float) -> dict:
        tt = torch.full((B,), t, device=device, dtype=torch.float32)
        if not guide_at[t]:
            v = cond_vel(zz, zz, tt)
            return apply_terms(v, v, zz, terms, lambda inputs: cond_vel(zz, inputs, tt)) if terms else v
        zu = uncond.inputs(zz)            # a stream's null input, where a plugin replaces it
        if batched_cfg:
            out = x_pred({k: torch.cat([v, zu[k]]) for k, v in zz.items()}, torch.cat([tt, tt]), batched_labels,
                         batched_blocked)
            cond = {k: v[:B] for k, v in out.items()}
            unc = {k: v[B:] for k, v in out.items()}
        else:
            cond = x_pred(zz, tt, labels, None)
            unc = x_pred(zu, tt, uncond.labels, uncond_blocked)
        res, v_cond = {}, {}
        for s in streams:
            k, ts = s.name, s.prediction_time(tt)
            vc, vu = velocity(cond[k].float(), zz[k], ts, t_eps), velocity(unc[k].float(), zz[k], ts, t_eps)
            res[k], v_cond[k] = vu + scales[k] * (vc - vu), vc
        return apply_terms(res, v_cond, zz, terms, lambda inputs: cond_vel(zz, inputs, tt)) if terms else res

    for i in range(steps):
        t0, t1, dt = times[i], times[i + 1], deltas[i]                # dt: per-stream step (time shifts)
        v1 = vel(z, t0)
        if method == "euler" or i == steps - 1:
            z = {k: z[k] + dt[k] * v1[k] for k in z}
            continue
        z_tilde = {k: z[k] + dt[k] * v1[k] for k in z}
        v2 = vel(z_tilde, t1)
        z = {k: z[k] + dt[k] * 0.5 * (v1[k] + v2[k]) for k in z}
    return z if return_all_streams else z[PIXEL]


def grouped_for(model, blocked: Optional[torch.Tensor]):
    """``blocked`` as the model attends with it fastest: the samples grouped by block pattern (one host sync)
    for the fast path, else the matrix itself (the exact path builds a token mask from it without a sync)."""
    if blocked is None or getattr(model, "attention_path", "exact") != "fast":
        return blocked
    return StreamGroups(blocked)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 with round(clip(255 (x + 1) / 2)) (the evaluation protocol's quantisation)."""
    return (255 * (x.float() + 1) / 2).clamp(0, 255).round().to(torch.uint8)
