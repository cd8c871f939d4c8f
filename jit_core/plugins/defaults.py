"""The core's own hook implementations: JiT's behaviour, registered ``trylast``.

Every firstresult hook has its default here, so with no plugin enabled a training step is
exactly the JiT step, and a plugin's implementation overrides the default simply by returning a
value.
"""
from __future__ import annotations

from jit_core.diffusion import default_unconditional
from jit_core.hookspecs import hookimpl
from jit_core.model import get_model_config


@hookimpl(trylast=True)
def jit_normalize(stream, target, config):
    return target


@hookimpl(trylast=True)
def jit_unconditional(labels, drop, streams, config):
    num_classes = get_model_config(config.model, **config.model_overrides).num_classes
    return default_unconditional(labels, drop, num_classes)


@hookimpl(trylast=True)
def jit_guidance_scale(stream, scale, config):
    return scale if stream.guidance else 1.0
