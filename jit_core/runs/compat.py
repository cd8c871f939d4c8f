"""Do these weights fit this model? If not, which keys differ and what model the tensors describe."""
from __future__ import annotations

import torch
from torch import nn

from jit_core.errors import CheckpointError
from jit_core.official.infer import infer_model_config


def _shape(t) -> list[int]:
    return list(t.shape)


def check_compatible(sd: dict[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """Raise :class:`CheckpointError` unless ``sd`` has exactly ``model``'s keys and shapes."""
    ref = model.state_dict()
    mismatched = [k for k in ref if k in sd and tuple(sd[k].shape) != tuple(ref[k].shape)]
    missing = [k for k in ref if k not in sd]
    unexpected = [k for k in sd if k not in ref]
    if not (mismatched or missing or unexpected):
        return

    def listing(keys, fmt):
        more = f" (and {len(keys) - 5} more)" if len(keys) > 5 else ""
        return "; ".join(fmt(k) for k in keys[:5]) + more

    parts = []
    if mismatched:
        parts.append(listing(mismatched, lambda k: f"{k} has shape {_shape(ref[k])} here but {_shape(sd[k])} in the file"))
    if missing:
        parts.append("missing from the file: " + listing(missing, lambda k: f"{k} {_shape(ref[k])}"))
    if unexpected:
        parts.append("in the file but not in the model: " + listing(unexpected, lambda k: f"{k} {_shape(sd[k])}"))
    try:
        cfg = infer_model_config(sd, in_context_start=0)
        hint = " (its tensors say: " + ", ".join(f"{k}={cfg[k]}" for k in (
            "image_size", "patch_size", "hidden_size", "depth", "num_heads", "bottleneck_dim", "num_classes")) + ")"
    except (CheckpointError, KeyError, ValueError):
        hint = ""
    raise CheckpointError(f"checkpoint {source} is for a different model: {'; '.join(parts)}; build the model with "
                          f"the config the checkpoint was trained with{hint} (see its run's config.json)")
