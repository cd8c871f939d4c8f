"""Guidance terms beside CFG (the ``jit_guidance_terms`` hook): v = v_cfg + w (v(x, z) - v(x, null z)).

A plugin's :class:`GuidanceTerm` names the null input of some of its own streams; the sampler runs one
more conditional forward with those inputs replaced and adds ``w`` times the difference between the
conditional velocity and that forward's velocity to every stream (e.g. ReDi's representation guidance,
arXiv 2504.16064).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from jit_core.errors import PluginError
from jit_core.hookcalls import call_each
from jit_core.model.streams import Stream


@dataclass(frozen=True)
class GuidanceTerm:
    """One guidance term: ``weight`` w and the null input of each of the plugin's streams it replaces."""

    weight: float
    inputs: Mapping[str, torch.Tensor | float] = field(default_factory=dict)


def guidance_terms(hook, streams: Sequence[Stream], scale: float) -> list[GuidanceTerm]:
    """Every enabled plugin's terms (weight 0 left out), each checked to replace only that plugin's streams."""
    owner = {s.name: s.plugin for s in streams}
    terms = []
    for plugin, answer in call_each(hook.jit_guidance_terms, streams=list(streams), scale=scale):
        for term in answer:
            if not isinstance(term, GuidanceTerm):
                raise PluginError(f"plugin {plugin!r}: jit_guidance_terms must return GuidanceTerm objects, "
                                  f"not {type(term).__name__}")
            foreign = [name for name in term.inputs if owner.get(name) != plugin]
            if foreign or not term.inputs:
                raise PluginError(f"plugin {plugin!r}: a guidance term must replace inputs of its own streams only "
                                  f"(it names {', '.join(foreign) or 'none'}; its streams: "
                                  f"{', '.join(n for n, p in owner.items() if p == plugin) or 'none'})")
            if term.weight != 0:
                terms.append(term)
    return terms


def apply_terms(v: dict[str, torch.Tensor], v_cond: Mapping[str, torch.Tensor], z: Mapping[str, torch.Tensor],
                terms: Sequence[GuidanceTerm], velocity_of: Callable[[dict], Mapping[str, torch.Tensor]]) -> dict:
    """``v + sum_k w_k (v_cond - velocity_of(z with term k's inputs replaced))`` for every stream whose input the
    term keeps (a replaced stream's prediction from a null input is not trained: its velocity is left as is)."""
    for term in terms:
        nulled = dict(z)
        for name, null in term.inputs.items():
            nulled[name] = torch.as_tensor(null).to(device=z[name].device, dtype=z[name].dtype).expand_as(z[name])
        v_null = velocity_of(nulled)
        v = {k: v[k] if k in term.inputs else v[k] + term.weight * (v_cond[k] - v_null[k]) for k in v}
    return v
