"""Metrics: Fréchet distance, improved precision/recall, the offline torch-fidelity path, the classifier metric."""
from __future__ import annotations

import itertools
import json
import socket

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from jit_core.eval import classifier as C
from jit_core.eval import fid as M


# ----------------------------------------------------------------------------------- Fréchet distance
def test_frechet_of_a_set_with_itself_is_zero_and_grows_with_a_mean_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    mu, sigma = M.feature_stats(a)
    assert abs(M.frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    dists = [M.frechet_distance(mu, sigma, mu + s, sigma) for s in (0.0, 0.1, 0.5, 1.0, 3.0)]
    assert all(x < y for x, y in itertools.pairwise(dists))
    # a pure mean shift adds exactly |shift|^2
    assert dists[3] == pytest.approx(8 * 1.0 ** 2, rel=1e-6)


def test_frechet_matches_the_closed_form_for_diagonal_gaussians():
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([0.3, 2.0, 4.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert M.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_with_singular_covariances_is_finite():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 32)), rng.normal(size=(10, 32))  # fewer samples than dimensions
    d = M.frechet_distance(*M.feature_stats(x), *M.feature_stats(y))
    assert np.isfinite(d) and d > 0
    assert M.feature_stats(torch.from_numpy(x))[1].dtype == np.float64


@pytest.mark.parametrize("n,d", [(12, 40), (40, 40), (60, 40)])
def test_frechet_to_features_equals_the_matrix_square_root_form(n, d):
    """The N x N eigenvalue route (N <= D) gives the same distance as sqrtm of the D x D product."""
    rng = np.random.default_rng(n)
    x, ref = rng.normal(size=(n, d)) + 0.3, rng.normal(size=(400, d)) * 1.2
    mu, sigma = M.feature_stats(ref)
    assert M.frechet_distance_to_features(x, mu, sigma) == pytest.approx(
        M.frechet_distance(*M.feature_stats(x), mu, sigma), rel=1e-6)


# ----------------------------------------------------------------------------------- precision / recall
def test_precision_recall_identical_sets_and_disjoint_far_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16))
    pr = M.precision_recall(a, a.copy(), k=3)
    assert pr["precision"] == pytest.approx(1.0) and pr["recall"] == pytest.approx(1.0)
    far = M.precision_recall(a, a + 100.0, k=3)
    assert far["precision"] == 0.0 and far["recall"] == 0.0


def test_precision_recall_half_collapsed_generator():
    """Fakes that all sit on half of the real data: precision ~1, recall ~1/2; batching changes nothing."""
    rng = np.random.default_rng(2)
    real = np.concatenate([rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) + 50])
    fake = rng.normal(size=(300, 4))
    pr = M.precision_recall(real, fake, k=3)
    assert pr["precision"] > 0.9 and 0.4 < pr["recall"] < 0.55
    assert M.precision_recall(real, fake, k=3, max_elements=1000) == pr


# ----------------------------------------------------------------------------------- torch-fidelity, offline
@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    return M.random_inception_weights(tmp_path_factory.mktemp("inception") / "random-inception.pth")


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty TORCH_HOME and no sockets: any download attempt fails loudly."""
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    real_connect = socket.socket.connect

    def connect(sock, address):  # local (AF_UNIX) sockets, e.g. DataLoader workers, are fine
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            refuse(address)
        return real_connect(sock, address)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", refuse)
    return home


def _write_pngs(folder, n, size, seed, offset=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = np.clip(rng.normal(128 + offset, 40, size=(*size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:05d}.png")
    return folder


def test_fid_is_and_pr_offline_with_a_weights_file(inception_file, no_network, tmp_path):
    ref = _write_pngs(tmp_path / "ref" / "class_a", 10, (40, 48), seed=0)  # ADM-cropped to 32 by ref-stats
    out = tmp_path / "stats.npz"
    res = CliRunner().invoke(M.ref_stats_command(), [str(ref.parent), "--out", str(out), "--image-size", "32",
                                                     "--inception-weights", str(inception_file), "--max-images", "8"])
    assert res.exit_code == 0, res.output
    with np.load(out) as z:
        assert set(z.files) >= {"mu", "sigma", "n", "provenance"} and int(z["n"]) == 8
        assert z["mu"].shape == (2048,) and z["sigma"].shape == (2048, 2048)
        prov = json.loads(str(z["provenance"]))
    assert prov["weights_sha256"] == M.file_sha256(inception_file) and prov["image_size"] == 32

    samples = _write_pngs(tmp_path / "samples", 10, (32, 32), seed=1, offset=60)
    r = M.fidelity_metrics(samples, ref_stats=out, inception_weights=inception_file, isc=True, fid=True)
    assert np.isfinite(r["fid"]) and r["fid"] > 0 and r["inception_score"] >= 1.0 - 1e-6
    p = r["provenance"]
    assert p["tool"] == "torch-fidelity" and p["extractor"] == "inception-v3-compat" and p["isc_splits"] == 10
    assert p["reference_stats"]["sha256"] == M.file_sha256(out) and p["weights_sha256"]

    # in-memory uint8 images give the same features as their PNG files; a set against its own stats ~ 0
    imgs = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1) for f in M.list_images(samples)])
    ext = M.load_inception(inception_file)
    feats = M.inception_features(imgs, ext)["2048"]
    np.savez(tmp_path / "self.npz", mu=M.feature_stats(feats)[0], sigma=M.feature_stats(feats)[1])
    same = M.fidelity_metrics(imgs, ref_stats=tmp_path / "self.npz", inception_weights=inception_file, isc=False)
    assert abs(same["fid"]) < 1e-6 * max(1.0, r["fid"])

    pr = M.fidelity_metrics(samples, ref_dir=samples, inception_weights=inception_file, isc=False, prc=True)
    assert pr["precision"] == 1.0 and pr["recall"] == 1.0 and abs(pr["fid"]) < 1e-6
    assert not any(no_network.iterdir()), "something was written into TORCH_HOME"


def test_missing_weights_offline_is_one_clear_line(no_network):
    with pytest.raises(M.InceptionWeightsError, match="--inception-weights PATH") as e:
        M.load_inception(None)
    assert "\n" not in str(e.value)
    with pytest.raises(M.InceptionWeightsError, match="--inception-weights PATH"):
        M.load_inception(no_network / "missing.pth")


# ----------------------------------------------------------------------------------- classifier metric
@pytest.fixture
def digits_classifier(monkeypatch, tmp_path):
    monkeypatch.setenv("JIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(C.DEFAULT_EPOCHS, "digits", 6)
    return C.get_classifier("digits", 16)


def test_digits_classifier_is_far_above_chance_and_cached(digits_classifier, monkeypatch, tmp_path):
    model, info = digits_classifier
    assert info["test_accuracy"] > 0.6, info  # chance is 0.1; typically ~0.95
    path = C.classifier_path("digits", 16)
    assert path.is_file() and path.parent == tmp_path / "cache"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert {"test_accuracy", "epochs", "seed", "date"} <= set(meta)

    def no_training(*a, **k):
        raise AssertionError("the cached classifier should have been loaded")
    monkeypatch.setattr(C, "train_classifier", no_training)
    again, info2 = C.get_classifier("digits", 16)
    x, _ = C.load_split("digits", 16, "test")
    assert torch.allclose(C.classifier_features(model, x[:8]), C.classifier_features(again, x[:8]), atol=1e-6)
    assert C.classifier_features(model, x[:8]).shape == (8, C.FEATURE_DIM) and info2["sha256"] == info["sha256"]


def test_classifier_metric_separates_real_from_noise(digits_classifier):
    x, y = C.load_split("digits", 16, "test")
    real = C.fmnist_metrics(x[:100], y[:100], "digits")
    noise = C.fmnist_metrics(torch.randint(0, 256, (100, 1, 16, 16), dtype=torch.uint8), y[:100], "digits")
    assert real["fd_classifier"] < 0.5 * noise["fd_classifier"]
    assert real["classifier_accuracy"] > 0.6 and noise["classifier_accuracy"] < 0.5
    assert "not FID" in real["fd_classifier_label"] and "EfficientNet" in real["provenance"]["independent_of"]
    assert real["fd_classifier_real_train"] is not None and real["classifier_test_accuracy"] > 0.6


def test_the_reference_statistics_and_floor_are_cached_beside_the_classifier(digits_classifier, monkeypatch):
    """A second evaluation (another process: the in-memory cache cleared) reads the held-out statistics and the
    real-train floor from disk, loading no split, with the same numbers; a damaged cache file is recomputed."""
    _, info = digits_classifier
    x, y = C.load_split("digits", 16, "test")
    C._reference_features.cache_clear()
    first = C.fmnist_metrics(x[:60], y[:60], "digits", n_boot=0)
    path = C.reference_path("digits", 16, info["sha256"])
    cached = C.read_reference(path)
    assert cached is not None and cached["floors"] == {60: first["fd_classifier_real_train"]}
    C._reference_features.cache_clear()
    with monkeypatch.context() as m:
        m.setattr(C, "load_split", lambda *a: (_ for _ in ()).throw(AssertionError("a split was loaded")))
        again = C.fmnist_metrics(x[:60], y[:60], "digits", n_boot=0)
    assert again["fd_classifier"] == first["fd_classifier"]
    assert again["fd_classifier_real_train"] == first["fd_classifier_real_train"]
    for damage in (b"not an npz", None):
        if damage is None:      # a well-formed npz of the wrong shapes
            C.save_reference(path, np.zeros(3), np.eye(3), 10, {})
        else:
            path.write_bytes(damage)
        assert C.read_reference(path) is None
        C._reference_features.cache_clear()
        redone = C.fmnist_metrics(x[:60], y[:60], "digits", n_boot=0)
        assert redone["fd_classifier"] == pytest.approx(first["fd_classifier"], rel=1e-6)
        assert C.read_reference(path) is not None


@pytest.mark.slow
def test_fashion_mnist_classifier_reaches_88_percent(monkeypatch, tmp_path):
    from jit_core.data import DataError, find_fashion_mnist_dir
    try:
        find_fashion_mnist_dir()
    except DataError as e:
        pytest.skip(str(e))
    monkeypatch.setenv("JIT_CACHE_DIR", str(tmp_path))
    _, info = C.get_classifier("fashion_mnist", 32)
    assert info["test_accuracy"] >= 0.88, info
