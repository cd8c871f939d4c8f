"""The unconditional branch of a batch: the core's null label plus every plugin's ``jit_null_branch``, merged.

Each plugin answers only for its own streams (:class:`NullBranch`: blocked stream pairs, loss masks,
null inputs, for the dropped samples); :func:`merge` combines them, blocked pairs united and loss
masks multiplied, into one :class:`Unconditional`. Training (``drop ~ Bernoulli``) and the
unconditional half of CFG (``drop`` all True) use the same :func:`unconditional_form`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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


@dataclass
class Unconditional:
    """A batch's merged unconditional form: what the model sees and which losses count."""

    labels: torch.Tensor                                            # null class where dropped
    drop: Optional[torch.Tensor] = None                             # (B,) bool
    blocked: Optional[torch.Tensor] = None                          # (B, S, S) bool, None = nothing blocked
    loss_masks: dict[str, torch.Tensor] = field(default_factory=dict)   # stream -> (B,) float
    null_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # stream -> replacement for dropped samples

    def inputs(self, noisy: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model inputs: ``noisy`` with each replaced stream's dropped samples swapped for its null input."""
        if not self.null_inputs:
            return dict(noisy)
        out = dict(noisy)
        for name, null in self.null_inputs.items():
            z = noisy[name]
            keep = self.drop.view(-1, *([1] * (z.dim() - 1)))
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
    masks: dict[str, torch.Tensor] = {}
    null_inputs: dict[str, torch.Tensor] = {}
    for plugin, branch in contributions:
        if not isinstance(branch, NullBranch):
            raise PluginError(f"plugin {plugin!r}: jit_null_branch must return a jit_core.diffusion.NullBranch "
                              f"or None, not {type(branch).__name__}")
        own = _streams_of(plugin, streams)
        for query, key in branch.blocked:
            _check_streams(plugin, own, names, (query, key), f"blocked pair ({query!r}, {key!r})")
            pairs[(index[query], index[key])] = plugin
        for stream, mask in branch.loss_masks.items():
            _check_streams(plugin, own, names, (stream,), "loss_masks")
            mask = torch.as_tensor(mask, dtype=torch.float32, device=labels.device)
            if mask.shape != drop.shape:
                raise PluginError(f"plugin {plugin!r}: loss mask of stream {stream!r} has shape {tuple(mask.shape)}, "
                                  f"expected {tuple(drop.shape)} (one weight per sample)")
            masks[stream] = mask if stream not in masks else masks[stream] * mask
        for stream, value in branch.inputs.items():
            _check_streams(plugin, own, names, (stream,), "inputs")
            null_inputs[stream] = torch.as_tensor(value)
    blocked = None
    if pairs:
        S = len(names)
        for q in range(S):
            closed = [k for k in range(S) if (q, k) in pairs]
            if len(closed) == S:
                raise PluginError(f"stream {names[q]!r} may see no key stream for dropped samples (blocked by "
                                  f"{', '.join(sorted({pairs[(q, k)] for k in closed}))}): its attention is undefined")
        blocked = torch.zeros(len(drop), S, S, dtype=torch.bool, device=labels.device)
        for q, k in pairs:
            blocked[:, q, k] = drop
    return Unconditional(labels=null, drop=drop, blocked=blocked, loss_masks=masks, null_inputs=null_inputs)


def unconditional_form(hook, labels: torch.Tensor, drop: torch.Tensor, streams: Sequence[Stream], config,
                       num_classes: int) -> Unconditional:
    """Every enabled plugin's ``jit_null_branch`` for ``drop``, merged with the core's null label."""
    contributions = call_each(hook.jit_null_branch, drop=drop, streams=streams, config=config)
    return merge(labels, drop, streams, num_classes, contributions)
