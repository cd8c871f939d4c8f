"""Flow matching as in JiT (``flow.py``: noising, x-prediction with a v-loss, Heun/Euler with CFG) and
image generation from a network (``generate.py``: per-sample noise seeds, batching, EMA swaps)."""
from jit_core.diffusion.flow import (
    StepState,
    Unconditional,
    add_noise,
    default_unconditional,
    guidance_active,
    masked_mean,
    noise_scale_for,
    per_sample_v_loss,
    sample,
    sample_t,
    to_uint8,
    training_losses,
    velocity,
)

__all__ = ["StepState", "Unconditional", "add_noise", "default_unconditional", "guidance_active", "masked_mean",
           "noise_scale_for", "per_sample_v_loss", "sample", "sample_t", "to_uint8", "training_losses", "velocity"]
