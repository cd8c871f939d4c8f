"""Tests for the JiT network (jit_core.model / layers / official): parity with the official code,
parameter counts, checkpoint layout, RoPE and sin-cos tables, init, attention paths, masks, errors."""
from __future__ import annotations

import math
import re
from dataclasses import replace
from functools import cache

import numpy as np
import pytest
import torch
from torch import nn

from jit_core.model import MODEL_CONFIGS, OFFICIAL_PARAM_COUNTS, JiT, ModelConfig, get_model_config
from jit_core.model.layers import apply_rope, rope_tables, sincos_2d
from jit_core.model.streams import Stream, pixel_stream
from jit_core.official.layout import from_official, to_official

from .official_fixtures import compact

TINY = ModelConfig(image_size=32, patch_size=4, hidden_size=64, depth=3, num_heads=4, bottleneck_dim=16,
                   in_context_len=4, in_context_start=1, num_classes=10)
VCO_TINY = ModelConfig(image_size=256, patch_size=16, hidden_size=64, depth=3, num_heads=4, bottleneck_dim=16,
                       in_context_len=4, in_context_start=1, num_classes=10)
PARITY_TOL = 1e-5  # official fixtures: max |diff| ~1e-6 in fp32 on CPU (thread count alone moves it), 1e-5 is fair


pytestmark = pytest.mark.usefixtures("one_thread")


def vco_streams(feature_channels: int = 768):
    return [pixel_stream(), Stream("feature", "tokens", feature_channels, default_init=True)]


@cache
def meta_model(name: str, vco: bool = False) -> JiT:
    """A named config built on the meta device (no memory); V-Co variants use proj_drop 0."""
    cfg = MODEL_CONFIGS[name]
    with torch.device("meta"):
        if vco:
            return JiT(replace(cfg, proj_drop=0.0), vco_streams())
        return JiT(cfg)


def perturbed(model: nn.Module, std: float = 0.02, seed: int = 0) -> nn.Module:
    """Add N(0, std^2) to every trainable tensor so the zero-initialised layers are not trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)
    return model


# =========================================================================== parity with official code
# the official outputs on the in-repository compact copy (tests/fixtures/official, README there)
@pytest.mark.parametrize("path", ["exact", "fast"])
def test_parity_official_jit_tiny(path):
    fx = compact("jit_tiny")
    ckpt = fx.checkpoint()
    model = JiT(TINY).eval().set_attention(path)
    for weights, expected in (("model", "io/x_pred"), ("model_ema1", "io/x_pred_ema1")):
        sd, layout = from_official(ckpt[weights])
        assert layout == "jit"
        model.load_state_dict(sd, strict=True)
        with torch.no_grad():
            out = model(fx["io/z"], fx["io/t"], fx["io/y"]).pixel
        fx.check(out, expected, rtol=0, atol=PARITY_TOL)
    # the two weight sets give different outputs, so the comparison above can tell them apart
    assert (fx["io/x_pred"] - fx["io/x_pred_ema1"]).abs().max() > 1e-3


@pytest.fixture(scope="module")
def vco_parity():
    fx = compact("vco_tiny")
    model = JiT(VCO_TINY, vco_streams()).eval()
    sd, layout = from_official(fx.weights())
    assert layout == "vco"
    model.load_state_dict(sd, strict=True)
    return model, fx


def test_parity_official_vco_tiny(vco_parity):
    model, fx = vco_parity
    inputs = {"pixel": fx["io/z"], "feature": fx["io/zs"]}
    t, y, y_drop, drop = fx["io/t"], fx["io/y"], fx["io/y_drop"], fx["io/drop"]
    blocked = torch.zeros(2, 2, 2, dtype=torch.bool)
    blocked[:, 0, 1] = drop  # pixel queries of dropped rows may not see feature keys
    with torch.no_grad():
        out = model(inputs, t, y).x_hat
        dropped = model(inputs, t, y_drop, blocked=blocked).x_hat
        label_only = model(inputs, t, y_drop).x_hat  # null label but no mask
    assert drop.tolist() == [True, False]
    for key, name in (("pixel", "x_pred"), ("feature", "f_pred")):
        for row in (0, 1):
            fx.check(out[key][row], f"io/{name}/{row}", rtol=0, atol=PARITY_TOL)
        fx.check(dropped[key][0], f"io/{name}_drop/0", rtol=0, atol=PARITY_TOL)
        # the dropped row really changes; the undropped row is the conditional call (the fixture's row 1)
        assert (dropped[key][0] - out[key][0]).abs().max() > 1e-3
        torch.testing.assert_close(dropped[key][1], out[key][1], atol=PARITY_TOL, rtol=0)
    # the mask itself matters (not only the null label): without it the pixel row misses the fixture
    with pytest.raises(AssertionError):
        fx.check(label_only["pixel"][0], "io/x_pred_drop/0", rtol=0, atol=1e-3)


def test_vco_to_official_keys_match_fixture(vco_parity):
    model, fx = vco_parity
    official = {k: v for k, v in fx.weights().items() if k not in ("img_mean", "img_std")}
    ours = to_official(model.state_dict())
    assert sorted(ours) == sorted(official)
    for k, v in ours.items():
        assert tuple(v.shape) == tuple(official[k].shape), k
    assert model.num_params() == 613_752  # the fixture's trainable parameter count (official config.json)


def test_jit_to_official_keys_match_fixture():
    model = JiT(TINY)
    ours = to_official(model.state_dict())
    assert sorted(ours) == sorted(compact("jit_tiny").weights())
    assert model.num_params() == 259_340 and model.num_params(trainable_only=False) == 263_436


# =========================================================================== parameter counts
@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAM_COUNTS))
def test_official_param_counts(name):
    assert meta_model(name).num_params() == OFFICIAL_PARAM_COUNTS[name]


def test_param_count_with_frozen_table_b16():
    model = meta_model("JiT-B/16")
    assert model.num_params(trainable_only=False) == 131_320_320
    assert model.num_params(trainable_only=False) - model.num_params() == 256 * 768  # the sin-cos table


@pytest.mark.parametrize("name,count", [("JiT-B/16", 260_666_112), ("JiT-L/16", 915_384_768),
                                        ("JiT-H/16", 1_901_737_856)])
def test_vco_param_counts(name, count):
    assert meta_model(name, vco=True).num_params() == count


# =========================================================================== state-dict layout
def official_b16_layout() -> dict[str, tuple[int, ...]]:
    """JiT-B/16 keys and shapes, transcribed from docs/official-code.md#jit-checkpoint (in its order)."""
    h, d, f, p = 768, 64, 2048, 16
    keys = {"net.pos_embed": (1, 256, h), "net.in_context_posemb": (1, 32, h),
            "net.t_embedder.mlp.0.weight": (h, 256), "net.t_embedder.mlp.0.bias": (h,),
            "net.t_embedder.mlp.2.weight": (h, h), "net.t_embedder.mlp.2.bias": (h,),
            "net.y_embedder.embedding_table.weight": (1001, h),
            "net.x_embedder.proj1.weight": (128, 3, p, p),
            "net.x_embedder.proj2.weight": (h, 128, 1, 1), "net.x_embedder.proj2.bias": (h,)}
    for n in range(12):
        b = f"net.blocks.{n}."
        keys.update({b + "norm1.weight": (h,), b + "attn.q_norm.weight": (d,), b + "attn.k_norm.weight": (d,),
                     b + "attn.qkv.weight": (3 * h, h), b + "attn.qkv.bias": (3 * h,),
                     b + "attn.proj.weight": (h, h), b + "attn.proj.bias": (h,), b + "norm2.weight": (h,),
                     b + "mlp.w12.weight": (2 * f, h), b + "mlp.w12.bias": (2 * f,),
                     b + "mlp.w3.weight": (h, f), b + "mlp.w3.bias": (h,),
                     b + "adaLN_modulation.1.weight": (6 * h, h), b + "adaLN_modulation.1.bias": (6 * h,)})
    keys.update({"net.final_layer.norm_final.weight": (h,), "net.final_layer.linear.weight": (p * p * 3, h),
                 "net.final_layer.linear.bias": (p * p * 3,),
                 "net.final_layer.adaLN_modulation.1.weight": (2 * h, h),
                 "net.final_layer.adaLN_modulation.1.bias": (2 * h,)})
    return keys


def test_b16_state_dict_layout():
    sd = meta_model("JiT-B/16").state_dict()
    assert len(sd) == 183
    official = to_official(sd)
    expected = official_b16_layout()
    assert len(expected) == 183
    assert sorted(official) == sorted(expected)
    assert {k: tuple(v.shape) for k, v in official.items()} == expected
    assert tuple(official["net.blocks.0.attn.qkv.weight"].shape) == (2304, 768)
    assert tuple(official["net.x_embedder.proj1.weight"].shape) == (128, 3, 16, 16)
    assert tuple(official["net.final_layer.linear.weight"].shape) == (768, 768)
    # rope tables are not saved (non-persistent buffers), the frozen table is
    assert not any("rope" in k for k in sd)


@pytest.mark.parametrize("name,tensors", [("JiT-L/16", 351), ("JiT-H/16", 463)])
def test_tensor_counts(name, tensors):
    assert len(meta_model(name).state_dict()) == tensors


@pytest.mark.parametrize("vco", [False, True])
def test_official_round_trip(vco):
    sd = meta_model("JiT-B/16", vco=vco).state_dict()
    official = to_official(sd)
    back, layout = from_official(official)
    assert layout == ("vco" if vco else "jit")
    assert list(back) == list(sd)
    assert all(back[k] is sd[k] for k in sd)


# =========================================================================== RoPE
def hand_rope(head_dim: int, grid: int, prefix: int):
    """(cos, sin) computed entry by entry from docs/official-code.md#rope."""
    half = head_dim // 2
    L = prefix + grid * grid
    cos, sin = np.ones((L, head_dim)), np.zeros((L, head_dim))
    for r in range(grid):
        for c in range(grid):
            n = prefix + r * grid + c
            for k in range(half // 2):
                w = 10000 ** (-2 * k / half)
                for ch in (2 * k, 2 * k + 1):               # rows: channels [0, d/2)
                    cos[n, ch], sin[n, ch] = math.cos(r * w), math.sin(r * w)
                for ch in (half + 2 * k, half + 2 * k + 1):  # columns: channels [d/2, d)
                    cos[n, ch], sin[n, ch] = math.cos(c * w), math.sin(c * w)
    return torch.from_numpy(cos).float(), torch.from_numpy(sin).float()


@pytest.mark.parametrize("prefix", [0, 3])
def test_rope_tables_hand_computed(prefix):
    cos, sin = rope_tables(8, 4, prefix)
    ref_cos, ref_sin = hand_rope(8, 4, prefix)
    assert cos.shape == sin.shape == (prefix + 16, 8)
    torch.testing.assert_close(cos, ref_cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, ref_sin, atol=1e-6, rtol=0)
    # explicit spot checks: token (r=2, c=3), frequencies w0 = 1, w1 = 10000^-0.5 = 0.01
    n = prefix + 2 * 4 + 3
    assert sin[n, 0].item() == pytest.approx(math.sin(2.0), abs=1e-6)
    assert sin[n, 3].item() == pytest.approx(math.sin(0.02), abs=1e-7)
    assert sin[n, 4].item() == pytest.approx(math.sin(3.0), abs=1e-6)
    assert sin[n, 7].item() == pytest.approx(math.sin(0.03), abs=1e-7)
    if prefix:
        assert torch.equal(cos[:prefix], torch.ones(prefix, 8))
        assert torch.equal(sin[:prefix], torch.zeros(prefix, 8))


def test_apply_rope_pairs_and_norms():
    torch.manual_seed(0)
    prefix, grid, d = 3, 4, 8
    cos, sin = rope_tables(d, grid, prefix)
    x = torch.randn(2, 5, prefix + grid * grid, d)
    out = apply_rope(x, cos, sin)
    # hand rotation of each adjacent pair (a, b) -> (a cos - b sin, b cos + a sin)
    a, b = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, 0::2], sin[:, 0::2]
    ref = torch.stack([a * c - b * s, b * c + a * s], dim=-1).flatten(-2)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert torch.equal(out[..., :prefix, :], x[..., :prefix, :])  # in-context rows untouched
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=0)
    assert (out[..., prefix + 1:, :] - x[..., prefix + 1:, :]).abs().max() > 0.1  # grid rows do rotate


def test_model_rope_buffers():
    model = JiT(TINY)
    cos, sin = rope_tables(TINY.head_dim, TINY.grid, 0)
    assert torch.equal(model.rope_cos, cos) and torch.equal(model.rope_sin, sin)
    assert model.rope_ic_cos.shape == (TINY.in_context_len + TINY.grid ** 2, TINY.head_dim)
    assert torch.equal(model.rope_ic_cos[TINY.in_context_len:], cos)
    assert torch.equal(model.rope_ic_sin[:TINY.in_context_len], torch.zeros(TINY.in_context_len, TINY.head_dim))


# =========================================================================== sin-cos table
def test_sincos_table_first_half_is_column():
    h, g = 768, 16
    table = sincos_2d(h, g)
    assert table.shape == (g * g, h) and table.dtype == torch.float32
    d4 = h // 4
    i = np.arange(d4, dtype=np.float64)
    w = 1.0 / 10000 ** (i / d4)
    ref = np.zeros((g * g, h))
    for r in range(g):
        for c in range(g):
            ref[r * g + c] = np.concatenate([np.sin(c * w), np.cos(c * w), np.sin(r * w), np.cos(r * w)])
    # float64 computation rounded once to float32 (a float32 computation is off by up to ~8e-7)
    torch.testing.assert_close(table, torch.from_numpy(ref).float(), atol=2e-7, rtol=0)
    # token (r=1, c=5): block 0 is sin(5 w), block 2 is sin(1 w)
    n = 1 * g + 5
    assert table[n, 1].item() == pytest.approx(math.sin(5 * 10000 ** (-1 / d4)), abs=1e-7)
    assert table[n, 2 * d4 + 1].item() == pytest.approx(math.sin(10000 ** (-1 / d4)), abs=1e-7)
    model = JiT(TINY)
    assert torch.equal(model.pos_embed[0], sincos_2d(TINY.hidden_size, TINY.grid))
    assert not model.pos_embed.requires_grad


# =========================================================================== initialisation
def test_zero_init_output_and_layers():
    torch.manual_seed(0)
    model = JiT(replace(TINY, num_classes=1000))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32), torch.tensor([0.2, 0.9]), torch.tensor([3, 1000])).pixel
    assert torch.equal(out, torch.zeros_like(out))
    for block in model.blocks:
        for sb in block.streams.values():
            assert not sb.adaLN_modulation[-1].weight.any() and not sb.adaLN_modulation[-1].bias.any()
            assert sb.attn.qkv.weight.std() > 0 and not sb.attn.qkv.bias.any()
    for head in model.heads.values():
        for lin in (head.adaLN_modulation[-1], head.linear):
            assert not lin.weight.any() and not lin.bias.any()
    table = model.y_embedder.embedding_table.weight
    assert table.shape == (1001, TINY.hidden_size)
    assert table.std().item() == pytest.approx(0.02, abs=5e-4)
    assert abs(table.mean().item()) < 5e-4
    assert model.in_context_posemb.std().item() == pytest.approx(0.02, abs=2e-3)
    assert model.t_embedder.mlp[0].weight.std().item() == pytest.approx(0.02, abs=5e-4)
    # xavier-uniform on the fused qkv matrix: bound sqrt(6 / (fan_in + fan_out))
    qkv = model.blocks[0].streams["pixel"].attn.qkv.weight
    bound = math.sqrt(6 / (64 + 192))
    assert qkv.abs().max() <= bound and qkv.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


# =========================================================================== attention paths
@pytest.fixture(scope="module")
def two_stream_model():
    torch.manual_seed(0)
    model = perturbed(JiT(TINY, [pixel_stream(), Stream("feature", "tokens", 8)])).eval()
    g = torch.Generator().manual_seed(1)
    inputs = {"pixel": torch.randn(3, 3, 32, 32, generator=g), "feature": torch.randn(3, 64, 8, generator=g)}
    t, y = torch.tensor([0.1, 0.5, 0.95]), torch.tensor([1, 2, 10])
    blocked = torch.zeros(3, 2, 2, dtype=torch.bool)
    blocked[0, 0, 1] = True
    blocked[2, 1, 0] = True
    return model, inputs, t, y, blocked


def _run(model, path, inputs, t, y, blocked, autocast=False):
    model.set_attention(path)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(inputs, t, y, blocked=blocked).x_hat


@pytest.mark.parametrize("masked", [False, True])
def test_fast_equals_exact_fp32(two_stream_model, masked):
    """fp32 on CPU: the fused SDPA path and the official-numerics path agree within 1e-5."""
    model, inputs, t, y, blocked = two_stream_model
    blocked = blocked if masked else None
    exact, fast = (_run(model, p, inputs, t, y, blocked) for p in ("exact", "fast"))
    for k in ("pixel", "feature"):
        assert exact[k].abs().max() > 0.05  # non-trivial outputs
        torch.testing.assert_close(fast[k], exact[k], atol=1e-5, rtol=0)


def test_mask_changes_output(two_stream_model):
    model, inputs, t, y, blocked = two_stream_model
    plain, masked = (_run(model, "exact", inputs, t, y, b) for b in (None, blocked))
    assert (masked["pixel"][0] - plain["pixel"][0]).abs().max() > 1e-4   # pixel -> feature blocked
    assert (masked["feature"][2] - plain["feature"][2]).abs().max() > 1e-4  # feature -> pixel blocked
    torch.testing.assert_close(masked["pixel"][1], plain["pixel"][1], atol=1e-6, rtol=0)


def test_grouped_fast_attention_gradients_equal_exact(two_stream_model):
    """The fast path attends per block pattern without a token mask (StreamGroups); inputs and
    weight gradients equal the exact masked path's."""
    model, inputs, t, y, blocked = two_stream_model
    grads = {}
    for path in ("exact", "fast"):
        model.zero_grad()
        x = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        out = model.set_attention(path)(x, t, y, blocked=blocked).x_hat
        (out["pixel"].square().mean() + out["feature"].square().mean()).backward()
        grads[path] = [x["pixel"].grad, x["feature"].grad] + [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(grads["fast"]) == len(grads["exact"]) > 10
    for a, b in zip(grads["fast"], grads["exact"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_stream_groups_equal_masked_sdpa():
    """Three streams, four patterns (one all-open): grouped attention == SDPA with the -inf token mask."""
    from jit_core.model import StreamGroups, token_mask
    lengths = [5, 7, 3]
    blocked = torch.zeros(6, 3, 3, dtype=torch.bool)
    blocked[0, 0, 1] = blocked[3, 0, 1] = True            # pixel -> feature (V-Co's null branch)
    blocked[1, 1, 0] = blocked[1, 2, 0] = True            # two query streams blocked from the pixels
    blocked[4, 0, 1] = blocked[4, 0, 2] = blocked[4, 2, 1] = True
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 2, sum(lengths), 8, generator=g) for _ in range(3))
    groups = StreamGroups(blocked)
    assert len(groups.patterns) == 4
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=token_mask(blocked, lengths))
    torch.testing.assert_close(groups.attention(q, k, v, lengths, 0.0), ref, atol=1e-6, rtol=0)
    only_open = StreamGroups(torch.zeros(2, 3, 3, dtype=torch.bool))
    assert only_open.single
    torch.testing.assert_close(only_open.attention(q[:2], k[:2], v[:2], lengths, 0.0),
                               torch.nn.functional.scaled_dot_product_attention(q[:2], k[:2], v[:2]))


def test_stream_that_sees_nothing_is_refused():
    from jit_core.model import StreamGroups
    blocked = torch.zeros(1, 2, 2, dtype=torch.bool)
    blocked[0, 1] = True
    with pytest.raises(ValueError, match="no key stream"):
        StreamGroups(blocked)


@pytest.mark.parametrize("masked", [False, True])
def test_bf16_autocast_both_paths(two_stream_model, masked):
    """bf16 autocast on CPU: both paths run and stay within 2e-2 relative (Frobenius norm) of the fp32
    exact output, and of each other. bf16 has an 8-bit mantissa (~4e-3 per rounding); through 3 blocks
    the measured relative error is ~5e-3, so 2e-2 leaves margin while catching a wrong path."""
    model, inputs, t, y, blocked = two_stream_model
    blocked = blocked if masked else None
    ref = _run(model, "exact", inputs, t, y, blocked)
    outs = {p: _run(model, p, inputs, t, y, blocked, autocast=True) for p in ("exact", "fast")}
    for k in ("pixel", "feature"):
        for p, out in outs.items():
            assert torch.isfinite(out[k]).all(), p
            rel = ((out[k].float() - ref[k]).norm() / ref[k].norm()).item()
            assert rel < 2e-2, (p, k, rel)
        rel = ((outs["fast"][k].float() - outs["exact"][k].float()).norm() / ref[k].norm()).item()
        assert rel < 2e-2, (k, rel)


def test_set_attention_rejects_unknown():
    with pytest.raises(ValueError, match="flash"):
        JiT(TINY).set_attention("flash")


# =========================================================================== mask expansion
def test_token_mask_expansion():
    """The (B, S, S) stream matrix becomes a (B, 1, L, L) bool mask, True where the query may attend;
    the exact path gives a masked logit -inf, as the official additive 0 / -inf bias does."""
    from jit_core.model import token_mask
    K, T = TINY.in_context_len, TINY.grid ** 2
    lengths = [K + T, K + T, T]  # streams with in-context tokens own their K prefix tokens
    blocked = torch.zeros(2, 3, 3, dtype=torch.bool)
    blocked[0, 0, 1] = True
    blocked[0, 2, 0] = True
    blocked[1, 1, 2] = True
    mask = token_mask(blocked, lengths)
    L = sum(lengths)
    assert mask.shape == (2, 1, L, L) and mask.dtype == torch.bool
    owner = torch.tensor([0] * lengths[0] + [1] * lengths[1] + [2] * lengths[2])
    for b in range(2):
        assert torch.equal(~mask[b, 0], blocked[b][owner[:, None], owner[None, :]])
    # spot checks: pixel in-context query 0 vs feature in-context key K + T (sample 0 blocked)
    assert not mask[0, 0, 0, K + T] and mask[0, 0, K + T, 0] and not mask[0, 0, 2 * (K + T), 5] and mask[1, 0, 0, K + T]
    # exact path with the mask == the official additive bias, bit for bit
    from jit_core.model.attention import exact_attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, L, 8, generator=g) for _ in range(3))
    bias = torch.zeros(2, 1, L, L).masked_fill(~mask, float("-inf"))
    logits = (q @ k.transpose(-2, -1)) * 8 ** -0.5 + bias
    assert torch.equal(exact_attention(q, k, v, mask, 0.0), torch.softmax(logits, dim=-1) @ v)


# =========================================================================== bad input
def test_indivisible_image_size():
    with pytest.raises(ValueError) as err:
        JiT(replace(TINY, image_size=30))
    assert "30" in str(err.value) and "4" in str(err.value)
    with pytest.raises(ValueError, match=r"250.*16"):
        get_model_config("JiT-B/16", image_size=250)


def test_wrong_resolution_at_forward():
    model = JiT(TINY)
    with pytest.raises(ValueError, match=r"\(16, 16\).*32x32"):
        model(torch.zeros(1, 3, 16, 16), torch.zeros(1), torch.zeros(1, dtype=torch.long))


def test_unknown_model_name_suggests_nearest():
    with pytest.raises(KeyError) as err:
        get_model_config("JiT-B/15")
    msg = str(err.value)
    assert "JiT-B/15" in msg and re.search(r"Did you mean 'JiT-B/16'", msg)


# =========================================================================== dropout placement
def test_dropout_only_in_middle_blocks_h16():
    model = meta_model("JiT-H/16")
    depth = model.cfg.depth
    q = depth // 4
    assert (depth, q) == (32, 8)
    for i, block in enumerate(model.blocks):
        p = 0.2 if q <= i < 3 * q else 0.0
        drops = [m for m in block.modules() if isinstance(m, nn.Dropout)]
        assert len(drops) == 2, i  # projection dropout and the SwiGLU hidden dropout
        assert all(d.p == p for d in drops), (i, [d.p for d in drops])
        assert block.attn_drop == 0.0  # H trains with attention dropout 0
    # the heads and embedders carry no dropout
    outside = [m for name, m in model.named_modules() if isinstance(m, nn.Dropout) and not name.startswith("blocks.")]
    assert outside == []
