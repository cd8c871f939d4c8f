"""``vco.encoder_precision``: fp32 runs the encoder in fp32 even inside a bf16 autocast region (bit-identical to
no autocast), bf16 follows the autocast (and so differs), and a bad value is refused."""
from __future__ import annotations

import pytest
import torch

from vco_plugin.features import build_encoder
from vco_plugin.plugin import VCoOptions


def _images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_fp32_switch_ignores_autocast():
    enc = build_encoder("efficientnet_lite0", "random", precision="fp32")
    x = _images()
    with torch.no_grad():
        ref_t, ref_e = enc.target_tokens(x, 4), enc.embedding(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            t, e = enc.target_tokens(x, 4), enc.embedding(x)
            t2, e2 = enc.target_and_embedding(x, 4)
    assert torch.equal(t, ref_t) and torch.equal(e, ref_e) and t2.dtype == torch.float32


def test_bf16_follows_autocast():
    enc = build_encoder("efficientnet_lite0", "random", precision="bf16")
    x = _images()
    with torch.no_grad():
        ref = enc.target_tokens(x, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            t = enc.target_tokens(x, 4)
    assert t.dtype == torch.float32 and not torch.equal(t, ref)


def test_gradient_reaches_input_in_fp32():
    enc = build_encoder("efficientnet_lite0", "random", precision="fp32")
    x = _images().to(torch.bfloat16).requires_grad_(True)     # x-hat as a bf16 model would give it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        enc.embedding(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_option_and_builder():
    assert VCoOptions().encoder_precision == "bf16"
    assert build_encoder("efficientnet_lite0", "random", precision="fp32").precision == "fp32"
    with pytest.raises(ValueError, match="encoder precision"):
        build_encoder("efficientnet_lite0", "random", precision="fp16")
