"""The network a run's config describes: the one place a run's ``JiT`` is built (training, loading, testing).

The model config is the named one with the run's ``model_overrides`` (at start-up, channels and classes taken
from the data); the streams are JiT's pixel stream plus every enabled plugin's (``jit_streams``); the attention
path is ``train.attention``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from jit_core.config import Config
from jit_core.model import JiT, Stream, get_model_config
from jit_core.plugins import Plugins


def build_network(config: Config, plugins: Plugins, model_config: Any = None, *, device: Any = "cpu",
                  streams: Optional[Sequence[Stream]] = None, attention: Optional[str] = None) -> JiT:
    """``JiT(model_config, streams, attention)`` on ``device``, randomly initialised (from the global RNG).

    ``model_config``: default ``config.model`` with ``config.model_overrides``; ``streams``: the ones the
    start-up checks already built (default: asked of the plugins, whose per-run objects must exist:
    :meth:`Plugins.start_run`); ``attention``: default ``config.train.attention``."""
    mc = model_config if model_config is not None else get_model_config(config.model, **config.model_overrides)
    streams = streams if streams is not None else plugins.streams(config, mc)
    return JiT(mc, streams, attention or config.train.attention).to(device)
