"""Tests for jit_core.data: ADM crop, IDX parsing, datasets, seeded flips, corrupt files, errors."""
import copy
import gzip
import logging
import struct
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from jit_core import data
from jit_core.config import DataConfig
from jit_core.data import DataError, adm_center_crop, build_dataset, to_model_range


# --------------------------------------------------------------------------------------- ADM crop
def _blocky(w, h, seed=0):
    """An RGB image made of constant 2x2 blocks, so a BOX halving is exactly the block values."""
    blocks = np.random.default_rng(seed).integers(0, 256, (h // 2, w // 2, 3), dtype=np.uint8)
    return blocks, Image.fromarray(blocks.repeat(2, 0).repeat(2, 1))


@pytest.mark.parametrize("w,h", [(12, 8), (8, 12)])
def test_adm_crop_hand_computed(w, h):
    # min side 8 >= 2*4: halve once to (w/2, h/2); short side is then 4 = size (no rescale);
    # crop rows (H-4)//2.., columns (W-4)//2.. of the halved image.
    blocks, img = _blocky(w, h)
    out = np.asarray(adm_center_crop(img, 4))
    top, left = (h // 2 - 4) // 2, (w // 2 - 4) // 2
    assert out.shape == (4, 4, 3)
    assert (top, left) == ((0, 1) if w > h else (1, 0))
    np.testing.assert_array_equal(out, blocks[top:top + 4, left:left + 4])


def test_adm_crop_large_image_box_halving(monkeypatch):
    calls = []
    orig = Image.Image.resize

    def spy(self, size, resample=None, *a, **k):
        calls.append((tuple(size), resample))
        return orig(self, size, resample, *a, **k)

    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (600, 1000, 3), dtype=np.uint8))
    monkeypatch.setattr(Image.Image, "resize", spy)
    out = adm_center_crop(img, 64)
    monkeypatch.setattr(Image.Image, "resize", orig)
    # 1000x600 -> 500x300 -> 250x150 -> 125x75 (BOX; 75 < 128 stops) -> round(125*64/75)=107 x 64 (BICUBIC)
    assert calls == [((500, 300), Image.BOX), ((250, 150), Image.BOX), ((125, 75), Image.BOX),
                     ((107, 64), Image.BICUBIC)]
    assert out.size == (64, 64)
    small = img
    for s in [(500, 300), (250, 150), (125, 75)]:
        small = small.resize(s, Image.BOX)
    expected = np.asarray(small.resize((107, 64), Image.BICUBIC))[:, (107 - 64) // 2:(107 - 64) // 2 + 64]
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_adm_crop_upscales_small_image():
    out = adm_center_crop(Image.new("RGB", (10, 20), (9, 9, 9)), 32)
    assert out.size == (32, 32) and np.asarray(out).max() == 9


def test_adm_crop_rejects_bad_size():
    with pytest.raises(DataError, match="positive"):
        adm_center_crop(Image.new("RGB", (8, 8)), 0)


# --------------------------------------------------------------------------------------- IDX / Fashion-MNIST
def _write_idx(path, arr, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_fashion(folder, n=5):
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "t10k"):
        images = rng.integers(1, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", images, 2051)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels, 2049)
        arrays[split] = images, labels
    return arrays


def test_read_idx(tmp_path):
    images = np.arange(3 * 2 * 4, dtype=np.uint8).reshape(3, 2, 4)
    _write_idx(tmp_path / "img.gz", images, 2051)
    _write_idx(tmp_path / "lab.gz", np.array([7, 1, 2]), 2049)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "img.gz"), images)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "lab.gz"), [7, 1, 2])
    (tmp_path / "plain").write_bytes(struct.pack(">IIII", 2051, 3, 2, 4) + images.tobytes())
    np.testing.assert_array_equal(data.read_idx(tmp_path / "plain"), images)
    (tmp_path / "short").write_bytes(struct.pack(">IIII", 2051, 3, 2, 4) + images.tobytes()[:-1])
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="not an IDX"):
        data.read_idx(tmp_path / "junk")


def test_fashion_mnist_env_override_and_padding(tmp_path, monkeypatch):
    arrays = _fake_fashion(tmp_path)
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path))
    assert data.find_fashion_mnist_dir() == tmp_path
    ds = build_dataset(DataConfig(name="fashion_mnist", image_size=32, flip=False))
    assert len(ds) == 5 and ds.num_classes == 10 and ds.channels == 1 and len(ds.classes) == 10
    x, y = ds[2]
    assert x.dtype == torch.uint8 and x.shape == (1, 32, 32) and y == 2
    assert x[:, :2].sum() == 0 and x[:, -2:].sum() == 0 and x[..., :2].sum() == 0 and x[..., -2:].sum() == 0
    np.testing.assert_array_equal(x[0, 2:30, 2:30].numpy(), arrays["train"][0][2])
    test_ds = build_dataset(DataConfig(name="fashion_mnist", image_size=16), train=False)
    assert test_ds[0][0].shape == (1, 16, 16) and not test_ds.flip


def test_fashion_mnist_missing_messages(tmp_path, monkeypatch):
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(DataError, match=data.FASHION_MNIST_ENV):
        data.find_fashion_mnist_dir()
    monkeypatch.delenv(data.FASHION_MNIST_ENV)
    monkeypatch.setattr(data, "_has_fashion_mnist", lambda folder: False)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        data.find_fashion_mnist_dir()


def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv(data.FASHION_MNIST_ENV, raising=False)
    try:
        data.find_fashion_mnist_dir()
    except DataError:
        pytest.skip("dataset-fashion-mnist is not installed")
    images, labels = data.load_fashion_mnist(train=True)
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [6000] * 10
    assert data.load_fashion_mnist(train=False)[0].shape == (10000, 28, 28)
    assert data.load_fashion_mnist(train=True)[0] is images  # cached per process
    x, y = build_dataset(DataConfig(name="fashion_mnist", image_size=32))[0]
    assert x.shape == (1, 32, 32) and 0 <= y < 10


# --------------------------------------------------------------------------------------- digits and flips
@pytest.fixture(scope="module")
def digits_cfg():
    pytest.importorskip("sklearn")
    return DataConfig(name="digits", image_size=32, flip=True)


def test_digits(digits_cfg):
    ds = build_dataset(digits_cfg, train=False)
    assert len(ds) == 1797 == len(ds.targets) and ds.num_classes == 10 and ds.channels == 1
    xs = torch.stack([ds[i][0] for i in range(64)])
    assert xs.dtype == torch.uint8 and xs.shape == (64, 1, 32, 32)
    assert xs.min() == 0 and xs.max() > 200
    assert {ds[i][1] for i in range(20)} == set(range(10))


def test_digits_needs_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match="pip install scikit-learn"):
        data.load_digits_arrays()


def test_flip_determinism(digits_cfg):
    plain = build_dataset(digits_cfg, train=False)
    a, b = build_dataset(digits_cfg, seed=3), build_dataset(digits_cfg, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    flipped = []
    for i in range(0, 1797, 7):
        xa, xb, x0 = a[i][0], b[i][0], plain[i][0]
        assert torch.equal(xa, xb)
        f = data.flip_decision(3, 2, i)
        assert torch.equal(xa, x0.flip(-1) if f else x0)
        flipped.append(f)
    assert 0.4 < np.mean(flipped) < 0.6
    decisions = lambda seed, epoch: [data.flip_decision(seed, epoch, i) for i in range(1000)]
    assert 450 < sum(decisions(0, 0)) < 550
    assert decisions(0, 0) == decisions(0, 0)
    assert decisions(0, 0) != decisions(0, 1) and decisions(0, 0) != decisions(1, 0)


# --------------------------------------------------------------------------------------- image folders
def _make_folder(root, corrupt=True):
    rng = np.random.default_rng(0)
    for cls, sizes in {"cat": [(40, 30), (20, 20)], "dog": [(30, 50)]}.items():
        (root / cls).mkdir(parents=True)
        for k, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / cls / f"{k}.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    if corrupt:
        (root / "cat" / "0bad.JPEG").write_bytes(b"\xff\xd8\xff garbage")
        good = root / "dog" / "0.png"
        (root / "dog" / "1trunc.png").write_bytes(good.read_bytes()[:60])


def test_folder_dataset(tmp_path):
    _make_folder(tmp_path, corrupt=False)
    cfg = DataConfig(name="folder", path=str(tmp_path), image_size=16)
    ds = build_dataset(cfg)
    assert ds.classes == ["cat", "dog"] and ds.targets == [0, 0, 1] and ds.num_classes == 2 == data.dataset_num_classes(cfg)
    assert ds.channels == 3 == data.dataset_channels(cfg) and ds.corrupt_count == 0
    x, y = ds[2]
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and y == 1
    # imagenet reads <path>/train when it exists
    _make_folder(tmp_path / "in" / "train", corrupt=False)
    (tmp_path / "in" / "val" / "extra").mkdir(parents=True)
    in_cfg = DataConfig(name="imagenet", path=str(tmp_path / "in"), image_size=8)
    assert data.dataset_num_classes(in_cfg) == 2 and len(build_dataset(in_cfg)) == 3
    assert data.dataset_num_classes(DataConfig(name="imagenet")) == 1000


def test_corrupt_images_skipped_and_counted(tmp_path, caplog):
    _make_folder(tmp_path)
    ds = build_dataset(DataConfig(name="folder", path=str(tmp_path), image_size=16, flip=False))
    assert len(ds) == 5  # cat: 0.png, 0bad.JPEG, 1.png; dog: 0.png, 1trunc.png
    with caplog.at_level(logging.WARNING, logger="jit_core.data"):
        items = [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))]
    assert ds.corrupt_count == 2
    assert sorted(p.rsplit("/", 1)[-1] for p in ds.corrupt_paths) == ["0bad.JPEG", "1trunc.png"]
    assert sum("skipping unreadable image" in r.message for r in caplog.records) == 2  # once per file
    # a bad file is replaced by the next readable one (wrapping around)
    assert torch.equal(items[1][0], items[2][0]) and items[1][1] == 0
    assert torch.equal(items[4][0], items[0][0]) and items[4][1] == 0
    assert torch.equal(copy.deepcopy(ds)[1][0], items[2][0])


def test_corrupt_count_seen_from_loader_workers(tmp_path):
    _make_folder(tmp_path)
    ds = build_dataset(DataConfig(name="folder", path=str(tmp_path), image_size=8))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)
    assert sum(1 for _ in loader) == 5
    assert ds.corrupt_count == 2


def test_all_corrupt_errors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"junk")
    ds = build_dataset(DataConfig(name="folder", path=str(tmp_path), image_size=8))
    with pytest.raises(DataError, match="no readable images"):
        ds[0]


def test_missing_and_empty_folder_errors(tmp_path):
    cfg = lambda path, name="folder", size=16: DataConfig(name=name, path=path, image_size=size)
    with pytest.raises(DataError, match=r"does not exist \(expected <root>/<class>/<image>"):
        build_dataset(cfg(str(tmp_path / "nope")))
    with pytest.raises(DataError, match=r"contains no class folders \(expected <root>/<class>/<image>"):
        build_dataset(cfg(str(tmp_path)))
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"contains no images \(expected <root>/<class>/<image>"):
        build_dataset(cfg(str(tmp_path), name="imagenet"))
    with pytest.raises(DataError, match="data.path is not set"):
        build_dataset(cfg(None))
    with pytest.raises(DataError, match="positive"):
        build_dataset(cfg(str(tmp_path), size=0))
    with pytest.raises(DataError, match="choose one of"):
        build_dataset(cfg(str(tmp_path), name="cifar"))
    assert issubclass(DataError, ValueError)


def test_channels_and_classes_without_loading():
    for name in ("fashion_mnist", "digits"):
        cfg = DataConfig(name=name)
        assert data.dataset_channels(cfg) == 1 and data.dataset_num_classes(cfg) == 10


def test_to_model_range():
    u8 = torch.tensor([0, 128, 255], dtype=torch.uint8)
    x = to_model_range(u8)
    assert x.dtype == torch.float32
    assert x[0].item() == -1.0 and x[2].item() == 1.0 and abs(x[1].item() - (2 * 128 / 255 - 1)) < 1e-6
    assert u8.tolist() == [0, 128, 255]
