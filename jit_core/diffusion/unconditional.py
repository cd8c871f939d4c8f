"""The unconditional branch of a batch: the core's null label plus every stream's ``null_branch`` and every
plugin's ``jit_null_branch``, merged.

Each answer concerns only its plugin's own streams (:class:`NullBranch`: blocked stream pairs, loss
masks, null inputs, for the dropped samples); :func:`merge` combines them, blocked pairs united and loss
masks multiplied, into one :class:`Unconditional`. A stream with its own ``drop_prob`` answers for its
own drop (drawn by the core from its plugin's seeded generator: :func:`own_drops`), every other answer
for the shared label drop. Training (``drop ~ Bernoulli``) and the unconditional half of CFG (every drop
all True) use the same :func:`unconditional_form`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from jit_core.errors import PluginError
from jit_core.hookcalls import call_each
from jit_core.model.streams import Stream


@dataclass
class NullBranch:
    """One plugin's part of the unconditional form, for its own streams (see the ``jit_null_branch`` hook)."""

    blocked: Sequence[tuple[str, str]] = ()                          # (query stream, key stream), dropped samples
    loss_masks: Mapping[str, torch.Tensor] = field(default_factory=dict)   # own stream -> (B,) float
    inputs: Mapping[str, torch.Tensor | float] = field(default_factory=dict)  # own stream -> null input
    drop: Optional[torch.Tensor] = None     # the (B,) samples this answer is for; set by the core (None: the shared drop)


@dataclass
class Unconditional:
    """A batch's merged unconditional form: what the model sees and which losses count."""

    labels: torch.Tensor                                            # null class where dropped
    drop: Optional[torch.Tensor] = None                             # (B,) bool
    blocked: Optional[torch.Tensor] = None                          # (B, S, S) bool, None = nothing blocked
    loss_masks: dict[str, torch.Tensor] = field(default_factory=dict)   # stream -> (B,) float
    null_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # stream -> replacement for dropped samples
    input_drops: dict[str, torch.Tensor] = field(default_factory=dict)  # stream -> (B,) samples it is replaced for

    def inputs(self, noisy: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model inputs: ``noisy`` with each replaced stream's dropped samples swapped for its null input."""
        if not self.null_inputs:
            return dict(noisy)
        out = dict(noisy)
        for name, null in self.null_inputs.items():
            z = noisy[name]
            drop = self.input_drops.get(name, self.drop)
            if drop is None:
                raise ValueError(f"stream {name!r} has a null input but no drop mask says which samples it replaces")
            keep = drop.view(-1, *([1] * (z.dim() - 1)))
            out[name] = torch.where(keep, null.to(device=z.device, dtype=z.dtype).expand_as(z), z)
        return out


def _streams_of(plugin: str, streams: Sequence[Stream]) -> set[str]:
    return {s.name for s in streams if getattr(s, "plugin", "") == plugin}


def _check_streams(plugin: str, own: set[str], names: Sequence[str], mentioned: Sequence[str], what: str) -> None:
    """A contribution may name only the model's streams, and must concern one of its plugin's own."""
    unknown = [n for n in mentioned if n not in names]
    if unknown:
        raise PluginError(f"plugin {plugin!r}: jit_null_branch {what} names stream {unknown[0]!r}, which the model "
                          f"does not have (streams: {', '.join(names)})")
    if not own.intersection(mentioned):
        raise PluginError(f"plugin {plugin!r}: jit_null_branch {what} concerns only streams it did not add (its "
                          f"streams: {', '.join(sorted(own)) or 'none'}); a plugin answers only for its own streams")


def merge(labels: torch.Tensor, drop: torch.Tensor, streams: Sequence[Stream], num_classes: int,
          contributions: Sequence[tuple[str, NullBranch]] = ()) -> Unconditional:
    """The null label where ``drop``, plus each ``(plugin, NullBranch)``: blocked pairs united, masks multiplied.

    Each contribution may only concern the streams its plugin added; violations and a stream left
    with no key stream to attend to are :class:`PluginError` naming the plugin.
    """
    drop = drop.to(device=labels.device, dtype=torch.bool)
    null = torch.where(drop, torch.full_like(labels, num_classes), labels)
    names = [s.name for s in streams]
    index = {n: i for i, n in enumerate(names)}
    pairs: dict[tuple[int, int], str] = {}
    pair_drops: dict[tuple[int, int], torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    null_inputs: dict[str, torch.Tensor] = {}
    input_drops: dict[str, torch.Tensor] = {}
    for plugin, branch in contributions:
        if not isinstance(branch, NullBranch):
            raise PluginError(f"plugin {plugin!r}: jit_null_branch must return a jit_core.diffusion.NullBranch "
                              f"or None, not {type(branch).__name__}")
        own = _streams_of(plugin, streams)
        answered = drop if branch.drop is None else branch.drop.to(device=labels.device, dtype=torch.bool)
        for query, key in branch.blocked:
            _check_streams(plugin, own, names, (query, key), f"blocked pair ({query!r}, {key!r})")
            pairs[(index[query], index[key])] = plugin
            qk = (index[query], index[key])
            pair_drops[qk] = answered if qk not in pair_drops else pair_drops[qk] | answered
        for stream, mask in branch.loss_masks.items():
            _check_streams(plugin, own, names, (stream,), "loss_masks")
            mask = torch.as_tensor(mask, dtype=torch.float32, device=labels.device)
            if mask.shape != drop.shape:
                raise PluginError(f"plugin {plugin!r}: loss mask of stream {stream!r} has shape {tuple(mask.shape)}, "
                                  f"expected {tuple(drop.shape)} (one weight per sample)")
            masks[stream] = mask if stream not in masks else masks[stream] * mask
        for stream, value in branch.inputs.items():
            _check_streams(plugin, own, names, (stream,), "inputs")
            null_inputs[stream], input_drops[stream] = torch.as_tensor(value), answered
    blocked = None
    if pairs:
        S = len(names)
        for q in range(S):
            closed = [k for k in range(S) if (q, k) in pairs]
            if len(closed) == S:
                raise PluginError(f"stream {names[q]!r} may see no key stream for dropped samples (blocked by "
                                  f"{', '.join(sorted({pairs[(q, k)] for k in closed}))}): its attention is undefined")
        blocked = torch.zeros(len(drop), S, S, dtype=torch.bool, device=labels.device)
        for (q, k), d in pair_drops.items():
            blocked[:, q, k] = d
    return Unconditional(labels=null, drop=drop, blocked=blocked, loss_masks=masks, null_inputs=null_inputs,
                         input_drops=input_drops)


def own_drops(streams: Sequence[Stream], batch: int, generator_for: Callable[..., torch.Generator],
              device) -> dict[str, torch.Tensor]:
    """The own per-sample drop of every stream with a ``drop_prob``: ``(B,)`` bool, drawn from its plugin's
    generator (purpose ``drop/<stream>``), so the core's own draws, and the baseline, are unchanged."""
    out = {}
    for s in streams:
        if s.drop_prob is not None:
            u = torch.rand(batch, generator=generator_for(s.plugin, f"drop/{s.name}"))
            out[s.name] = (u < s.drop_prob).to(device)
    return out


def unconditional_form(hook, labels: torch.Tensor, drop: torch.Tensor, streams: Sequence[Stream], config,
                       num_classes: int, *, training: bool = False, drops: Mapping[str, torch.Tensor] | None = None,
                       generator_for: Callable[..., torch.Generator] | None = None) -> Unconditional:
    """Every stream's ``null_branch`` and every enabled plugin's ``jit_null_branch``, merged with the core's
    null label. ``drop``: the shared label drop; ``drops``: streams' own drops (:func:`own_drops`; a stream
    with a ``drop_prob`` but no entry, as in sampling, uses ``drop``); ``generator_for(plugin, purpose)``: the
    plugin's generator of this step (:func:`jit_core.rng.plugin_generator`; ``jit_null_branch``'s ``generator``)."""
    drops = dict(drops or {})
    contributions = []
    for s in streams:
        answered = drops.get(s.name, drop)
        branch = s.null_branch(answered, streams, training)
        if branch is not None:
            if not isinstance(branch, NullBranch):
                raise PluginError(f"stream {s.name!r} of plugin {s.plugin!r}: null_branch must return a "
                                  f"jit_core.diffusion.NullBranch or None, not {type(branch).__name__}")
            contributions.append((s.plugin, replace(branch, drop=answered)))
    per_plugin = (lambda name: {"generator": generator_for(name)}) if generator_for else (lambda name: {"generator": None})
    contributions += call_each(hook.jit_null_branch, per_plugin=per_plugin, drop=drop, streams=streams, config=config,
                               training=training)
    return merge(labels, drop, streams, num_classes, contributions)
