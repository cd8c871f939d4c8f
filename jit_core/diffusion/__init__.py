"""Flow matching as in JiT (``flow.py``: noising, x-prediction with a v-loss, Heun/Euler with CFG), the
unconditional branch merged from every plugin's answer (``unconditional.py``) and image generation from a
network (``generate.py``: per-sample noise seeds, batching, EMA swaps)."""
from jit_core.diffusion.flow import (
    StepState,
    add_noise,
    guidance_active,
    guidance_scales,
    masked_mean,
    noise_scale_for,
    per_sample_v_loss,
    sample,
    sample_t,
    to_uint8,
    training_losses,
    velocity,
)
from jit_core.diffusion.guidance import GuidanceTerm
from jit_core.diffusion.unconditional import NullBranch, Unconditional, merge, unconditional_form

__all__ = ["GuidanceTerm", "NullBranch", "StepState", "Unconditional", "add_noise", "guidance_active", "guidance_scales",
           "masked_mean", "merge", "noise_scale_for", "per_sample_v_loss", "sample", "sample_t", "to_uint8",
           "training_losses", "unconditional_form", "velocity"]
