"""RMS calibration of the V-Co feature stream (vco_plugin/calibration.py)."""
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from vco_plugin.calibration import (
    EPS,
    FeatureStats,
    StatsError,
    calibrate_command,
    compute_stats,
    load_stats,
    save_stats,
    standardize,
    time_shift,
)
from vco_plugin.features import FeatureEncoder

T, C = 4, 6


class GaussianEncoder(FeatureEncoder):
    """Tokens z = mu + sigma * eps with known per-(position, channel) mu and sigma."""

    name, channels, embed_dim = "gaussian", C, 8

    def __init__(self, mu, sigma, seed=0):
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("sigma", sigma)
        self.gen = torch.Generator().manual_seed(seed)
        self.freeze()

    def target_tokens(self, images, grid):
        assert grid * grid == T
        eps = torch.randn(len(images), T, C, generator=self.gen, dtype=torch.float64)
        return (self.mu + self.sigma * eps).float()


def _setup():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(T, C, generator=g, dtype=torch.float64)
    sigma = torch.rand(T, C, generator=g, dtype=torch.float64) * 3 + 0.1
    images = [torch.rand(50, 1, 8, 8, generator=g) * 2 - 1 for _ in range(40)]  # 2000 images
    return mu, sigma, images


def test_compute_stats_recovers_known_statistics():
    mu, sigma, images = _setup()
    stats = compute_stats(GaussianEncoder(mu, sigma), iter(images), grid=2, progress=False)
    var = sigma.square()
    assert stats.var.shape == (T, C)
    # sample variance of n = 2000 Gaussians: relative std sqrt(2 / n) ~ 3 %
    torch.testing.assert_close(stats.var.double(), var, rtol=0.15, atol=0)
    rms_pixels = math.sqrt(1 / 3)  # uniform on [-1, 1]
    x = torch.cat(images)
    assert stats.meta["rms_pixels"] == pytest.approx(x.double().square().mean().sqrt().item(), rel=1e-9)
    assert stats.meta["rms_pixels"] == pytest.approx(rms_pixels, rel=0.01)
    # E[z^2] / (var + eps) = (mu^2 + sigma^2) / sigma^2 up to sampling error
    rms_std = ((mu.square() + var) / (var + EPS)).mean().sqrt().item()
    assert stats.meta["rms_features"] == pytest.approx(rms_std, rel=0.05)
    assert stats.rms_factor == pytest.approx(rms_pixels / rms_std, rel=0.05)
    assert stats.rms_factor == pytest.approx(stats.meta["rms_pixels"] / stats.meta["rms_features"], rel=1e-9)
    assert stats.meta["num_images"] == 2000 and stats.meta["grid"] == 2 and stats.meta["encoder"] == "gaussian"
    # after standardisation and scaling, the features have the pixels' RMS
    z = GaussianEncoder(mu, sigma, seed=5).target_tokens(torch.zeros(4000, 1, 8, 8), 2)
    f = standardize(z, stats)
    assert f.square().mean().sqrt().item() == pytest.approx(stats.meta["rms_pixels"], rel=0.05)


def test_compute_stats_max_images_and_pairs():
    mu, sigma, images = _setup()
    stats = compute_stats(GaussianEncoder(mu, sigma), ((x, None) for x in images), grid=2, max_images=120,
                          progress=False)
    assert stats.meta["num_images"] == 120


def test_standardize_formula():
    var = torch.rand(T, C) + 0.5
    stats = FeatureStats(var=var, rms_factor=0.485)
    z = torch.randn(3, T, C)
    torch.testing.assert_close(standardize(z, stats), z / torch.sqrt(var + 1e-5) * 0.485)
    with pytest.raises(ValueError, match="do not match"):
        standardize(torch.randn(3, T + 1, C), stats)


def test_save_load_round_trip(tmp_path):
    mu, sigma, images = _setup()
    stats = compute_stats(GaussianEncoder(mu, sigma), images[:2], grid=2, progress=False)
    path, jpath = save_stats(stats, tmp_path / "sub" / "stats.safetensors")
    assert jpath == tmp_path / "sub" / "stats.json"
    loaded = load_stats(path)
    torch.testing.assert_close(loaded.var, stats.var, atol=0, rtol=0)
    assert loaded.rms_factor == stats.rms_factor and loaded.meta == stats.meta
    summary = json.loads(jpath.read_text())
    assert summary["rms_factor"] == stats.rms_factor
    assert summary["var"]["max"] == pytest.approx(stats.var.max().item())
    assert summary["meta"]["encoder"] == "gaussian"
    with pytest.raises(StatsError, match="not found"):
        load_stats(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(StatsError, match="corrupt"):
        load_stats(tmp_path / "bad.safetensors")


def test_time_shift():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(time_shift(t, 1.0), t)
    for alpha in (0.485, 2.0):
        td = time_shift(t, alpha)
        assert td[0] == 0 and td[-1] == 1
        assert (td.diff() > 0).all()
        inner = slice(1, -1)
        torch.testing.assert_close(td[inner] / (1 - td[inner]), alpha * t[inner] / (1 - t[inner]))
    assert time_shift(torch.tensor(0.5), 0.485) < 0.5  # alpha < 1: the features are noisier at the same t


def test_calibrate_command(tmp_path):
    pytest.importorskip("sklearn")
    from click.testing import CliRunner

    out = tmp_path / "stats.safetensors"
    args = ["--data", "digits", "--encoder", "efficientnet_lite0", "--image-size", "32", "--grid", "2",
            "--max-images", "24", "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(calibrate_command(), args)
    assert result.exit_code == 0, result.output
    assert "RMS factor" in result.output and str(out) in result.output
    stats = load_stats(out)
    assert stats.var.shape == (4, 40) and stats.meta["num_images"] == 24 and stats.meta["dataset"] == "digits"
    assert stats.meta["image_shape"] == [1, 32, 32] and stats.rms_factor > 0
    assert out.with_suffix(".json").is_file()
    bad = CliRunner().invoke(calibrate_command(), ["--data", str(tmp_path / "nope"), "--out", str(out)])
    assert bad.exit_code != 0 and "image folder" in bad.output
