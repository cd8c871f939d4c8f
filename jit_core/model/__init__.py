"""The network: the multi-stream JiT (``jit.py``), its joint attention (``attention.py``), its layers and
the stream type a plugin adds.

``from jit_core.model import JiT, get_model_config`` is the usual entry; ``Stream`` is also
``jit_core.Stream``.
"""
from jit_core.model.attention import StreamGroups, joint_attention, token_mask
from jit_core.model.jit import (
    ATTENTION_PATHS,
    MODEL_CONFIGS,
    OFFICIAL_PARAM_COUNTS,
    JiT,
    JiTOutput,
    JointBlock,
    ModelConfig,
    StreamBlock,
    build_model,
    get_model_config,
)
from jit_core.model.streams import PIXEL, Stream, pixel_stream

__all__ = ["ATTENTION_PATHS", "MODEL_CONFIGS", "OFFICIAL_PARAM_COUNTS", "JiT", "JiTOutput", "JointBlock", "ModelConfig",
           "StreamBlock", "StreamGroups", "joint_attention", "token_mask", "build_model", "get_model_config", "PIXEL",
           "Stream", "pixel_stream"]
