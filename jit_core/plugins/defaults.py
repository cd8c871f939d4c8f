"""The core's own hook implementations: JiT's behaviour.

The *per stream* hooks (``jit_normalize``, ``jit_guidance_scale``) fall back to these for the pixel
stream and whenever the stream's plugin answers None, so with no plugin enabled a training step is
exactly the JiT step. The unconditional branch needs no default: the null label is the core's
(:func:`jit_core.diffusion.merge`), and without a ``jit_null_branch`` answer it is JiT's label drop.
"""
from __future__ import annotations

from jit_core.hookspecs import hookimpl


@hookimpl(trylast=True)
def jit_normalize(stream, target, config):
    return target


@hookimpl(trylast=True)
def jit_guidance_scale(stream, scale, config):
    return scale if stream.guidance else 1.0
