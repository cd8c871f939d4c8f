"""V-Co speed levers (both off by default): ``vco.shared_encoder_pass`` (one encoder trunk pass per
clean image for the target tokens and the hybrid loss's f+) and ``vco.feature_cache`` (precomputed
target tokens looked up by image content, built by ``jit vco cache-features``).

Real offline EfficientNet-Lite0 on 32 px images (grid 8); DINOv2 with random weights and one block.
"""
from __future__ import annotations

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from jit_core.config import ConfigError
from jit_core.data import to_model_range
from jit_core.diffusion import StepState, training_losses
from jit_core.hookcalls import call_each
from jit_core.model import JiT, get_model_config
from jit_core.plugins import Plugins
from jit_core.plugins.recording import RecordingPlugin
from jit_core.testing import run_cli, train_tiny
from tests.vco.test_vco_plugin import small_config  # the same small V-Co run
from vco_plugin import features, plugin
from vco_plugin.calibration import compute_stats, load_stats, save_stats, standardize
from vco_plugin.drift_loss import hybrid_loss
from vco_plugin.feature_cache import FeatureCacheError, build_cache, image_keys, open_cache
from vco_plugin.features import EFFNET_EMBED_STAGE, build_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def effnet():
    return build_encoder("efficientnet_lite0")


@pytest.fixture(scope="module")
def stats_file(tmp_path_factory, effnet):
    g = torch.Generator().manual_seed(0)
    stats = compute_stats(effnet, [torch.rand(4, 1, 32, 32, generator=g) * 2 - 1], 8, progress=False)
    path = tmp_path_factory.mktemp("stats") / "stats.safetensors"
    save_stats(stats, path)
    return str(path)


def u8_images(n=4, channels=1, size=32, seed=0):
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def images(n=4, seed=0):
    return to_model_range(u8_images(n, seed=seed))


def build(pl, cfg, seed=0):
    """A perturbed model; also seeds the global RNG, so that two runs draw the same noise."""
    mc = get_model_config(cfg.model, **cfg.model_overrides)
    torch.manual_seed(seed)
    model = JiT(mc, pl.streams(cfg, mc), attention_path="exact")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_options_default_off(vco, tmp_path):
    opts = plugin.VCoOptions()
    assert opts.shared_encoder_pass is False and opts.feature_cache is None
    cfg = small_config(vco, shared_encoder_pass="true", feature_cache=str(tmp_path))
    o = plugin.options(cfg)
    assert o.shared_encoder_pass is True and o.feature_cache == str(tmp_path)
    with pytest.raises(ConfigError, match="vco.feature_cache=.* does not exist: build it with `jit vco cache-features`"):
        small_config(vco, feature_cache=str(tmp_path / "missing"))


# ----------------------------------------------------------------------------------- 1. shared encoder pass
def test_effnet_target_and_embedding_is_one_forward(effnet, monkeypatch):
    x = images()
    calls = []
    real = effnet.net.forward_intermediates
    monkeypatch.setattr(effnet.net, "forward_intermediates", lambda *a, **k: calls.append(k["indices"]) or real(*a, **k))
    tokens, f_pos = effnet.target_and_embedding(x, 8)
    assert calls == [[2, EFFNET_EMBED_STAGE]]
    assert torch.equal(tokens, effnet.target_tokens(x, 8))
    # explicit: the pooled embedding stage of a forward at the target's input size (8 * grid = 64 px)
    big = F.interpolate(x.expand(-1, 3, -1, -1), size=(64, 64), mode="bilinear", align_corners=False)
    (emb,) = real(big, indices=[EFFNET_EMBED_STAGE], intermediates_only=True, stop_early=True)
    assert torch.allclose(f_pos, F.normalize(emb.mean((2, 3)), dim=-1), atol=1e-6)
    assert f_pos.shape == (4, 112) and not f_pos.requires_grad
    # not the official embedding (32 px input): that is why the lever is off by default
    assert (f_pos - effnet.embedding(x)).abs().max() > 1e-3


@pytest.fixture(scope="module")
def small_dinov2():
    """DINOv2-B/14-reg4 layout with random weights and a single block (same code paths, cheap)."""
    real = timm.create_model
    timm.create_model = lambda *a, **k: real(*a, **{**k, "depth": 1})
    try:
        enc = features.DINOv2Encoder("random")
    finally:
        timm.create_model = real
    with torch.no_grad():   # a non-trivial affine final LN, so that with/without affine differ
        enc.final_norm.weight.normal_(1.0, 0.2)
        enc.final_norm.bias.normal_(0.0, 0.2)
    return enc


def test_dinov2_target_and_embedding_is_one_trunk_pass(small_dinov2, monkeypatch):
    enc = small_dinov2
    assert len(enc.vit.blocks) == 1
    calls = []
    real = enc.trunk_tokens
    monkeypatch.setattr(enc, "trunk_tokens", lambda x: calls.append(x.shape) or real(x))
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    tokens, f_pos = enc.target_and_embedding(x, 16)
    assert len(calls) == 1 and tokens.shape == (2, 256, 768) and f_pos.shape == (2, 768)
    assert torch.equal(tokens, enc.target_tokens(x, 16))
    # explicit: bicubic 224 px input, CLS of the affine final LN of the same hidden states
    inp = F.interpolate((x + 1) / 2, size=(224, 224), mode="bicubic", align_corners=False)
    h = real((inp - enc.mean) / enc.std)
    assert torch.allclose(f_pos, F.normalize(enc.final_norm(h)[:, 0], dim=-1), atol=1e-6)
    assert torch.allclose(tokens, F.layer_norm(h, (768,), eps=1e-6)[:, 5:], atol=1e-5)
    # the official f+ uses a bilinear input: close but not equal at 256 px, identical at 224 px
    assert not torch.equal(f_pos, enc.embedding(x))
    x224 = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(2)) * 2 - 1
    _, f224 = enc.target_and_embedding(x224, 16)
    assert torch.allclose(f224, enc.embedding(x224), atol=1e-6)


def _objective(pl, cfg, x, labels, seed=0):
    """training_losses once; returns (losses, the StepState of the loss hooks)."""
    rec = RecordingPlugin()
    plugins = Plugins(enabled=list(cfg.plugins), extra=[rec])
    model = build(plugins, cfg)
    torch.manual_seed(seed)
    _, losses = training_losses(model, model.streams, x, labels, cfg, plugins.hook)
    return losses, rec.calls_of("jit_loss_terms")[-1].kwargs["step"]


def test_shared_pass_loss_terms_and_one_clean_encoder_pass(vco, stats_file, effnet, monkeypatch):
    calls = []
    real = type(effnet.net).forward_intermediates

    def counting(net, x, **kw):                 # every EfficientNet's passes (the run builds its own encoder)
        calls.append(tuple(kw["indices"]))
        return real(net, x, **kw)

    monkeypatch.setattr(type(effnet.net), "forward_intermediates", counting)
    x, labels = images(8), torch.tensor([0, 0, 0, 0, 3, 3, 3, 3])
    off_losses, off = _objective(vco, small_config(vco, stats=stats_file), x, labels)
    assert sorted(calls) == [(2,), (3,), (3,)]          # target, f+ (clean), f (x-hat): two clean passes
    calls.clear()
    on_losses, on = _objective(vco, small_config(vco, stats=stats_file, shared_encoder_pass=True), x, labels)
    assert sorted(calls) == [(2, 3), (3,)]              # one clean pass (target + f+), f (x-hat)

    # the targets and stream losses are those of today's computation (same RNG draws)
    stats = load_stats(stats_file)
    assert torch.equal(on.targets["feature"], off.targets["feature"])
    assert torch.allclose(on.targets["feature"], standardize(effnet.target_tokens(x, 8), stats))
    for k in ("pixel", "feature"):
        assert torch.equal(on_losses[k], off_losses[k]), k
    # the hybrid term uses f+ from the shared pass, explicitly recomputed here
    _, f_pos = effnet.target_and_embedding(x, 8)
    expected = 10.0 * hybrid_loss(effnet.embedding(on.preds["pixel"]), f_pos, labels)
    assert torch.allclose(on_losses["hybrid"], expected, rtol=1e-5)
    today = 10.0 * hybrid_loss(effnet.embedding(off.preds["pixel"]), effnet.embedding(x), labels)
    assert torch.allclose(off_losses["hybrid"], today, rtol=1e-5)


def test_f_pos_travels_on_the_step_only(vco, stats_file, effnet):
    """shared_encoder_pass: the feature stream's clean() leaves f+ in the step's values; the hybrid term uses
    it from there, and computes it from the images when the step carries none (no state between steps)."""
    cfg = small_config(vco, stats=stats_file, shared_encoder_pass=True)
    stream = vco.streams(cfg, get_model_config(cfg.model, **cfg.model_overrides))[1]
    x, labels = images(4, seed=0), torch.tensor([1, 1, 1, 1])
    x_hat = x + 0.1

    def hybrid(values):
        step = StepState(config=cfg, model=None, images=x, labels=labels, t=torch.rand(4),
                         drop=torch.zeros(4, dtype=torch.bool), uncond=None, targets={}, noisy={},
                         preds={"pixel": x_hat}, hidden={}, aux=None, losses={}, values=values)
        ((_, terms),) = call_each(vco.hook.jit_loss_terms, step=step, generator=None)
        return terms["hybrid"]

    values = {}
    tokens = stream.clean(x, values)
    _, shared_x = effnet.target_and_embedding(x, 8)
    assert set(values) == {plugin.F_POS} and torch.allclose(values[plugin.F_POS], shared_x)
    assert torch.allclose(tokens, effnet.target_tokens(x, 8), rtol=1e-5, atol=1e-5)
    f = effnet.embedding(x_hat)
    assert torch.allclose(hybrid(values), 10.0 * hybrid_loss(f, shared_x, labels))      # f+ from the step
    assert torch.allclose(hybrid({}), 10.0 * hybrid_loss(f, effnet.embedding(x), labels))   # none: recomputed


def test_shared_pass_off_without_hybrid_loss(vco, stats_file, effnet, monkeypatch):
    cfg = small_config(vco, stats=stats_file, shared_encoder_pass=True, drift_coef=0.0)
    stream = vco.streams(cfg, get_model_config(cfg.model, **cfg.model_overrides))[1]
    monkeypatch.setattr(type(effnet), "target_and_embedding", lambda *a: pytest.fail("f+ computed for nothing"))
    values = {}
    assert stream.clean(images(), values).shape == (4, 64, 40) and values == {}


# ----------------------------------------------------------------------------------- 2. feature cache: keys
def test_image_keys():
    u8 = u8_images(6, channels=3, size=16)
    x = to_model_range(u8)
    k = image_keys(x)
    assert k.dtype == torch.int64 and k.shape == (6, 2)
    assert torch.equal(k, image_keys(u8)) and torch.equal(k, image_keys(x.double()))
    assert len({tuple(r) for r in k.tolist()}) == 6
    assert torch.equal(image_keys(x[2:4]), k[2:4])                      # per image, batch-independent
    # one pixel one level up changes both hashes; equals a direct evaluation of the polynomial
    x2 = x.clone()
    x2[0, 1, 3, 5] += 2 / 255
    assert (image_keys(x2)[0] != k[0]).all()
    from vco_plugin.feature_cache import HASH_BASES, HASH_PRIMES
    v = (u8[0].reshape(-1).long() + 1).tolist()
    for j, (p, r) in enumerate(zip(HASH_PRIMES, HASH_BASES)):
        assert sum(a * pow(r, i, p) for i, a in enumerate(v)) % p == k[0, j].item()
    with pytest.raises(ValueError, match="8-bit"):
        image_keys(x + 0.001)
    with pytest.raises(ValueError, match="float32"):
        image_keys(x.half())


# ----------------------------------------------------------------------------------- 2. feature cache: building
def image_folder(root, n=6, size=32):
    """A tiny RGB ImageFolder; image 0 is left-right symmetric (its flip is itself)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        if i == 0:
            a = np.concatenate([a[:, : size // 2], a[:, : size // 2][:, ::-1]], 1)
        Image.fromarray(a).save(d / f"{i}.png")
    return root


def test_cache_features_command(tmp_path, effnet):
    from jit_core.config import DataConfig
    from jit_core.data import build_dataset

    data = image_folder(tmp_path / "data")
    out = tmp_path / "cache"
    res = run_cli("vco", "cache-features", "--data", str(data), "--encoder", "efficientnet_lite0", "--image-size",
                  "32", "--grid", "8", "--batch-size", "4", "--num-workers", "0", "--shard-rows", "5", "--device",
                  "cpu", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "cached 12 images (6 source images + flips; 1 repeated)" in res.output
    index = json.loads((out / "index.json").read_text())
    assert (index["encoder"], index["grid"], index["image_size"], index["channels"], index["dtype"]) == \
        ("efficientnet_lite0", 8, 32, 3, "float16")
    assert index["num_images"] == 12 and index["token_shape"] == [64, 40] and index["duplicates"] == 1
    assert [s["rows"] for s in index["shards"]] == [5, 5, 2]
    assert sorted(p.name for p in out.iterdir()) == ["features-00000.safetensors", "features-00001.safetensors",
                                                      "features-00002.safetensors", "index.json"]

    # cached targets == encoder targets, for the images and their flips, in every order
    ds = build_dataset(DataConfig(name="folder", path=str(data), image_size=32, flip=False), train=True)
    x = to_model_range(torch.stack([ds[i][0] for i in range(len(ds))]))
    both = torch.cat([x.flip(-1)[[5, 0, 2]], x[[3, 1, 4]]])
    cache = open_cache(out)
    got = cache.lookup(both)
    want = effnet.target_tokens(both, 8)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.allclose(got, want, rtol=2 ** -10, atol=1e-4)               # float16 storage
    with pytest.raises(FeatureCacheError, match=r"2 of 3 images of this batch are not in the cache.*"
                                                r"jit vco cache-features --data .* --encoder efficientnet_lite0"):
        cache.lookup(torch.cat([x[:1], to_model_range(u8_images(2, channels=3))]))
    with pytest.raises(FeatureCacheError, match="8-bit"):
        cache.lookup(x * 0.5 + 0.001)

    # float32 storage: exact; a rebuild into the same folder replaces the old shards
    res = run_cli("vco", "cache-features", "--data", str(data), "--encoder", "efficientnet_lite0", "--image-size",
                  "32", "--grid", "8", "--num-workers", "0", "--dtype", "float32", "--device", "cpu", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["features-00000.safetensors", "index.json"]
    assert torch.allclose(open_cache(out).lookup(both), want, rtol=1e-5, atol=1e-5)


def test_cache_refuses_other_settings(tmp_path, vco, effnet):
    u8 = u8_images(4)
    build_cache(effnet, [to_model_range(u8)], 8, tmp_path / "c", meta={"dataset": "digits"}, progress=False)
    cache = open_cache(tmp_path / "c")
    cache.check("efficientnet_lite0", None, 8, 32, 1)
    for args, what in ((("dinov2", None, 8, 32, 1), "encoder efficientnet_lite0 (this run: dinov2)"),
                       (("efficientnet_lite0", None, 4, 32, 1), "grid 8 (this run: 4)"),
                       (("efficientnet_lite0", None, 8, 64, 1), "image size 32 (this run: 64)"),
                       (("efficientnet_lite0", None, 8, 32, 3), "image channels 1 (this run: 3)"),
                       (("efficientnet_lite0", "random", 8, 32, 1), "encoder weights default (this run: random)")):
        with pytest.raises(FeatureCacheError, match=rf"another setting: {re.escape(what)}.*jit vco cache-features"):
            cache.check(*args)
    with pytest.raises(FeatureCacheError, match="does not exist.*jit vco cache-features"):
        open_cache(tmp_path / "nope")
    (tmp_path / "c" / "index.json").unlink()
    with pytest.raises(FeatureCacheError, match="not a complete feature cache"):
        open_cache(tmp_path / "c")
    assert issubclass(FeatureCacheError, ConfigError)      # `jit train` prints it as one line


# ----------------------------------------------------------------------------------- 2. feature cache: training
@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A 16-image RGB ImageFolder (2 classes) and its cache at 32 px, grid 8, with flips."""
    root = tmp_path_factory.mktemp("folder-run")
    data = image_folder(root / "data", n=16)
    out = root / "cache"
    res = run_cli("vco", "cache-features", "--data", str(data), "--encoder", "efficientnet_lite0", "--image-size", "32",
                  "--grid", "8", "--num-workers", "0", "--device", "cpu", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "cached 32 images (16 source images + flips" in res.output
    return {"data.name": "folder", "data.path": str(data), "data.image_size": 32, "vco.feature_cache": str(out)}


def test_training_with_the_cache(tmp_path, folder_run, stats_file, monkeypatch):
    calls = []
    real = features.EfficientNetLite0Encoder.target_tokens
    monkeypatch.setattr(features.EfficientNetLite0Encoder, "target_tokens",
                        lambda self, x, grid: calls.append(len(x)) or real(self, x, grid))
    lookups = []
    cls = type(open_cache(folder_run["vco.feature_cache"]))
    real_lookup = cls.lookup
    monkeypatch.setattr(cls, "lookup", lambda self, x: lookups.append((x, real_lookup(self, x))) or lookups[-1][1])
    opts = {"vco.encoder": "efficientnet_lite0", "vco.stats": stats_file, "sample.steps": 1, **folder_run}
    result, metrics = train_tiny(tmp_path, plugins=["vco"], steps=3, **opts)
    assert result.status == "finished" and result.step == 3
    assert all(np.isfinite(m["loss/feature"]) and m["loss/feature"] > 0 for m in metrics)
    probe, lookups = lookups[0], lookups[1:]                       # the start-up check's two images, then the steps
    assert len(probe[0]) == 2
    assert calls == [] and len(lookups) == 3                       # no encoder pass for the targets
    for x, got in lookups:                                         # the training batches (random flips)
        assert x.shape == (8, 3, 32, 32)
        assert torch.allclose(got, real(build_encoder("efficientnet_lite0"), x, 8), rtol=2 ** -10, atol=1e-4)
    from jit_core.config import DataConfig
    from jit_core.data import build_dataset
    ds = build_dataset(DataConfig(name="folder", path=folder_run["data.path"], image_size=32, flip=False))
    unflipped = {tuple(k) for k in image_keys(torch.stack([ds[i][0] for i in range(len(ds))])).tolist()}
    seen = {tuple(k) for x, _ in lookups for k in image_keys(x).tolist()}
    assert seen - unflipped and seen & unflipped                   # flipped and unflipped images were looked up


def test_training_start_refuses_a_mismatched_cache(tmp_path, folder_run, stats_file):
    opts = {"vco.encoder": "efficientnet_lite0", "vco.stats": stats_file, "vco.encoder_weights": "random", **folder_run}
    with pytest.raises(FeatureCacheError, match="encoder weights default .this run: random."):
        train_tiny(tmp_path, plugins=["vco"], steps=1, **opts)
    assert not list(tmp_path.glob("run*/metrics.jsonl"))


def test_feature_cache_refuses_gpu_images(tmp_path):
    """The lookup runs on the CPU only (on a GPU it costs more than the encoder pass: benchmarks/RESULTS.md);
    images on any other device are refused with the fix, before any work (meta stands in for CUDA here)."""
    from vco_plugin.feature_cache import FeatureCache

    cache = FeatureCache.__new__(FeatureCache)      # the check comes before the cache is used
    with pytest.raises(FeatureCacheError, match="unset vco.feature_cache for GPU runs"):
        cache.lookup(torch.zeros(2, 3, 8, 8, device="meta"))
