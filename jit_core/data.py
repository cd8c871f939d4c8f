"""Datasets: ImageNet-style folders (ADM center crop), Fashion-MNIST (offline IDX files) and sklearn digits.

Every dataset returns ``(uint8 tensor (C, S, S), int label)``; the float conversion
``x = 2 * u8 / 255 - 1`` happens later, on the device (:func:`to_model_range`), so loader workers and
host-to-device copies move 4x fewer bytes.

Random horizontal flips (training only) are a pure function of ``(seed, epoch, index)``: the trainer
calls ``dataset.set_epoch(epoch)`` at the start of every epoch, and sample ``index`` is flipped iff
:func:`flip_decision` says so. A resumed run therefore sees the same pixels, whatever the number of
loader workers or the order they fetch in.

Corrupt images in a folder dataset are skipped, not fatal: the first time a file fails to open or
decode, a warning is logged, the file is flagged bad, and the next readable index (``i + 1, i + 2, ...``
wrapping around) is returned in its place. ``dataset.corrupt_count`` and ``dataset.corrupt_paths``
report the files flagged so far; the flags live in shared memory, so they include what
``DataLoader`` worker processes found.
"""
from __future__ import annotations

import functools
import gzip
import logging
import multiprocessing
import multiprocessing.context
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from jit_core.config import DATASET_NAMES

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FASHION_MNIST_ENV = "JIT_FASHION_MNIST_DIR"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGITS_CLASSES = tuple(str(d) for d in range(10))
_FASHION_MISSING = (f"Fashion-MNIST not found: install it with `apt-get install {FASHION_MNIST_PACKAGE}` "
                    f"or set {FASHION_MNIST_ENV}")


class DataError(ValueError):
    """A dataset cannot be found or read; the message says how to fix it."""


# --------------------------------------------------------------------------------------- helpers
def to_model_range(u8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] -> float32 in [-1, 1] (0 -> -1, 255 -> 1 exactly)."""
    return u8.to(torch.float32).div_(127.5).sub_(1.0)


def adm_center_crop(pil_image: Image.Image, size: int) -> Image.Image:
    """ADM's center crop to ``size`` x ``size``.

    While the short side is at least ``2 * size``, halve both sides (floor) with a BOX filter; then
    scale so the short side is ``size`` (sides rounded) with BICUBIC; then crop the center, at row
    offset ``(H - size) // 2`` and column offset ``(W - size) // 2``.
    """
    _check_size(size)
    img = pil_image
    while min(img.size) >= 2 * size:
        img = img.resize((img.width // 2, img.height // 2), resample=Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), resample=Image.Resampling.BICUBIC)
    top, left = (img.height - size) // 2, (img.width - size) // 2
    return img.crop((left, top, left + size, top + size))


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finalizer: a fast, well-mixed, platform-independent integer hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def flip_decision(seed: int, epoch: int, index: int) -> bool:
    """Whether sample ``index`` is flipped in ``epoch`` of a run seeded ``seed`` (probability 1/2)."""
    h = _mix64(_mix64(_mix64(seed & _MASK64) ^ (epoch & _MASK64)) ^ (index & _MASK64))
    return bool(h >> 63)


def _check_size(size) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise DataError(f"image size must be a positive integer, got {size!r}")


def _to_chw(arr: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, C) uint8 array -> contiguous (C, H, W) uint8 tensor."""
    t = torch.from_numpy(np.array(arr, order="C"))  # a writable copy (PIL/IDX arrays are read-only)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


class _FlipMixin:
    """Seeded per-(epoch, index) horizontal flips; ``set_epoch`` is called by the trainer."""

    flip: bool = False
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _maybe_flip(self, img: torch.Tensor, index: int) -> torch.Tensor:
        if self.flip and flip_decision(self.seed, self.epoch, index):
            return img.flip(-1)
        return img


# --------------------------------------------------------------------------------------- IDX / Fashion-MNIST
_IDX_DTYPES: dict[int, np.dtype] = {code: np.dtype(t) for code, t in
                                     {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.items()}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzipped or not), e.g. MNIST's: magic ``0x0000TTNN`` (T: dtype, N: ndim),
    then N big-endian uint32 dimensions, then the data."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"corrupt gzip file {path}: {e}") from e
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4)) if len(raw) >= header else None
    dtype = _IDX_DTYPES[raw[2]]
    if shape is None or len(raw) - header != int(np.prod(shape)) * dtype.itemsize:
        raise DataError(f"{path} is truncated or corrupt (header says shape {shape}, {len(raw)} bytes)")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _existing_idx_file(folder: Path, stem: str) -> Path:
    path = _idx_file(folder, stem)
    if path is None:
        raise DataError(f"{folder} has no {stem}[.gz]: the Fashion-MNIST folder lost a file; reinstall "
                        f"the {FASHION_MNIST_PACKAGE} package or fix ${FASHION_MNIST_ENV}")
    return path


def _has_fashion_mnist(folder: Path) -> bool:
    return all(_idx_file(folder, f"{split}-{kind}") for split in ("train", "t10k")
               for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))


def find_fashion_mnist_dir() -> Path:
    """The folder holding Fashion-MNIST's IDX files.

    Order: ``$JIT_FASHION_MNIST_DIR``; the files listed by ``dpkg -L dataset-fashion-mnist``;
    ``/usr/share/datasets/fashion-mnist``. Raises :class:`DataError` with the fix if none has them.
    """
    env = os.environ.get(FASHION_MNIST_ENV)
    if env:
        if _has_fashion_mnist(Path(env)):
            return Path(env)
        raise DataError(f"{FASHION_MNIST_ENV}={env} does not contain Fashion-MNIST's "
                        "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] files: fix or unset it")
    candidates = []
    if shutil.which("dpkg"):
        try:
            out = subprocess.run(["dpkg", "-L", FASHION_MNIST_PACKAGE], capture_output=True, text=True,
                                 timeout=30, check=False).stdout
            candidates += [Path(line).parent for line in out.splitlines()
                           if Path(line).name.startswith("train-images-idx3-ubyte")]
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.append(Path("/usr/share/datasets/fashion-mnist"))
    for folder in candidates:
        if _has_fashion_mnist(folder):
            return folder
    raise DataError(_FASHION_MISSING)


@functools.lru_cache(maxsize=4)
def _load_fashion_mnist_arrays(folder: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    split = "train" if train else "t10k"
    images = read_idx(_existing_idx_file(Path(folder), f"{split}-images-idx3-ubyte"))
    labels = read_idx(_existing_idx_file(Path(folder), f"{split}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST in {folder} is inconsistent: images {images.shape}, labels {labels.shape}")
    return images, labels.astype(np.int64)


def load_fashion_mnist(train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 28, 28), labels int64 (N,))``; decoded once per process and cached."""
    return _load_fashion_mnist_arrays(str(find_fashion_mnist_dir()), bool(train))


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ``(images uint8 (1797, 8, 8) in 0..255, labels int64)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("the digits dataset needs scikit-learn: install it with `pip install scikit-learn` "
                        "(or `pip install -e '.[dev]'`)") from e
    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64)


# --------------------------------------------------------------------------------------- datasets
class ArrayDataset(_FlipMixin, Dataset):
    """In-memory grayscale images ``(N, H, W)`` uint8, resized per item by ``transform`` (a PIL
    image -> PIL image function); items are ``(uint8 (1, S, S), label)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                 transform: Callable[[np.ndarray], np.ndarray], flip: bool = False, seed: int = 0):
        self.images, self.targets, self.classes = images, labels, list(classes)
        self.transform, self.flip, self.seed, self.epoch = transform, flip, seed, 0
        self.num_classes, self.channels = len(self.classes), 1
        self.corrupt_count = 0   # in-memory arrays cannot be corrupt
        self.corrupt_paths: list[str] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = _to_chw(self.transform(self.images[index]))
        return self._maybe_flip(img, index), int(self.targets[index])


def _resize_gray(size: int, resample: Image.Resampling) -> Callable[[np.ndarray], np.ndarray]:
    def fn(a: np.ndarray) -> np.ndarray:
        if a.shape == (size, size):
            return a
        return np.asarray(Image.fromarray(a).resize((size, size), resample=resample))
    return fn


def _fashion_transform(size: int) -> Callable[[np.ndarray], np.ndarray]:
    """28 px -> 32 px by padding with black (2 px each side); any other size by bicubic resize."""
    if size == 32:
        return lambda a: np.pad(a, 2)
    return _resize_gray(size, Image.Resampling.BICUBIC)


class ImageFolderDataset(_FlipMixin, Dataset):
    """``<root>/<class>/<image>`` RGB images, ADM center-cropped to ``size``.

    Classes are the sorted subfolder names (hidden ones skipped); class ``i`` is ``classes[i]``.
    Unreadable images are skipped and counted (see the module docstring).
    """

    def __init__(self, root: str | os.PathLike, size: int, flip: bool = False, seed: int = 0):
        _check_size(size)
        self.root, self.size, self.flip, self.seed, self.epoch = Path(root), size, flip, seed, 0
        self.classes = find_classes(self.root)
        self.samples: list[str] = []
        self.targets: list[int] = []
        empty = []
        for label, name in enumerate(self.classes):
            files = sorted(e.name for e in os.scandir(self.root / name)
                           if e.name.lower().endswith(IMG_EXTENSIONS) and not e.name.startswith(".")
                           and e.is_file())
            self.samples += [str(self.root / name / f) for f in files]
            self.targets += [label] * len(files)
            if files:
                check_image_mode(self.root / name / files[0])
            else:
                empty.append(name)
        if not self.samples:
            raise DataError(f"data path {self.root} contains no images (expected <root>/<class>/<image>.JPEG)")
        if empty:    # a class with no image would be trained as a label that never occurs
            more = f" (and {len(empty) - 3} more)" if len(empty) > 3 else ""
            raise DataError(f"class folder {self.root / empty[0]} holds no images{more}: every class folder under "
                            f"{self.root} needs at least one image ({', '.join(IMG_EXTENSIONS)}); add images or "
                            "remove the folder")
        self.num_classes, self.channels = len(self.classes), 3
        # 1 byte per sample, 1 = unreadable; shared with DataLoader workers (fork or spawn).
        self._bad = multiprocessing.RawArray("B", len(self.samples))

    def __getstate__(self):
        state = self.__dict__.copy()
        if multiprocessing.context.get_spawning_popen() is None:  # plain pickle / deepcopy: private copy
            state["_bad"] = bytearray(self._bad)
        return state

    @property
    def corrupt_count(self) -> int:
        return int(np.frombuffer(self._bad, np.uint8).sum())

    @property
    def corrupt_paths(self) -> list[str]:
        return [self.samples[i] for i in np.flatnonzero(np.frombuffer(self._bad, np.uint8))]

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, i: int) -> Image.Image | None:
        if self._bad[i]:
            return None
        try:
            with Image.open(self.samples[i]) as im:
                return to_rgb(im, self.samples[i])
        except Exception as e:  # noqa: BLE001 -- anything PIL raises on a broken file: truncated, bad header, bomb...
            self._bad[i] = 1
            log.warning("skipping unreadable image %s (%s: %s)", self.samples[i], type(e).__name__, e)
            return None

    def __getitem__(self, index: int):
        n = len(self.samples)
        for k in range(n):
            i = (index + k) % n
            img = self._load(i)
            if img is not None:
                arr = np.asarray(adm_center_crop(img, self.size))
                return self._maybe_flip(_to_chw(arr), index), self.targets[i]
        raise DataError(f"no readable images in {self.root}: all {n} files failed to decode")


# image modes read as RGB: 8-bit ones by PIL's convert; 16-bit grayscale (a 16-bit PNG) scaled to 8 bits first
# (PIL's convert would clip it to white). 32-bit integer or float modes ("I", "F") have no defined range: refused.
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La", "RGBa")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def check_image_mode(path: Path) -> None:
    """The mode of the image at ``path`` (its header only) is one :func:`to_rgb` reads; DataError naming its folder."""
    try:
        with Image.open(path) as im:
            mode = im.mode
    except Exception:  # noqa: BLE001 -- an unreadable file is skipped and counted when loaded, like any other
        return
    if mode not in EIGHT_BIT_MODES + SIXTEEN_BIT_MODES:
        raise DataError(f"{path.parent}: {path.name} has image mode {mode!r}, which has no defined 8-bit range; "
                        "convert the folder's images to 8 or 16 bits per channel (e.g. RGB PNG or JPEG)")


def to_rgb(im: Image.Image, path: str = "") -> Image.Image:
    """``im`` as 8-bit RGB: 16-bit grayscale scaled by 255/65535 (rounded), other supported modes by PIL."""
    if im.mode in SIXTEEN_BIT_MODES:
        arr = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.rint(arr * (255 / 65535)).astype(np.uint8), "L").convert("RGB")
    if im.mode not in EIGHT_BIT_MODES:
        raise DataError(f"{path}: image mode {im.mode!r} is not supported (no defined 8-bit range)")
    return im.convert("RGB")


def find_classes(root: str | os.PathLike) -> list[str]:
    """Sorted class subfolder names of an ImageFolder root; :class:`DataError` if missing or empty."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data path {root} does not exist (expected <root>/<class>/<image>.JPEG)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"data path {root} contains no class folders (expected <root>/<class>/<image>.JPEG)")
    return classes


# --------------------------------------------------------------------------------------- public entry points
def _check_name(cfg) -> str:
    if cfg.name not in DATASET_NAMES:
        raise DataError(f"unknown dataset data.name={cfg.name!r}: choose one of {', '.join(DATASET_NAMES)}")
    return cfg.name


def _folder_root(cfg) -> Path:
    if not cfg.path:
        raise DataError(f"data.path is not set: dataset {cfg.name!r} needs data.path=<root>/<class>/<image>.JPEG")
    root = Path(cfg.path).expanduser()
    if cfg.name == "imagenet" and (root / "train").is_dir():
        return root / "train"
    return root


def build_dataset(cfg, train: bool = True, seed: int = 0) -> ArrayDataset | ImageFolderDataset:
    """The dataset described by ``cfg`` (a ``jit_core.config.DataConfig``).

    ``train=False`` disables flips and selects Fashion-MNIST's test split (digits and folders have no
    separate split: ``imagenet`` reads ``<path>/train`` if it exists, else ``<path>``). ``seed`` seeds
    the flips. Items are ``(uint8 tensor (C, S, S), int label)``; the dataset has ``num_classes``,
    ``channels``, ``classes``, ``targets``, ``set_epoch(epoch)`` and ``corrupt_count``.
    """
    name = _check_name(cfg)
    size = cfg.image_size
    _check_size(size)
    flip = bool(cfg.flip and train)
    if name == "fashion_mnist":
        images, labels = load_fashion_mnist(train)
        return ArrayDataset(images, labels, FASHION_MNIST_CLASSES, _fashion_transform(size), flip, seed)
    if name == "digits":
        images, labels = load_digits_arrays()
        return ArrayDataset(images, labels, DIGITS_CLASSES, _resize_gray(size, Image.Resampling.BILINEAR), flip, seed)
    return ImageFolderDataset(_folder_root(cfg), size, flip, seed)


def dataset_channels(cfg) -> int:
    """Image channels of ``cfg``'s dataset, without loading it: 1 (grayscale) or 3 (RGB)."""
    return 1 if _check_name(cfg) in ("fashion_mnist", "digits") else 3


def dataset_num_classes(cfg) -> int:
    """Number of classes without loading images: 10 for fashion_mnist/digits, the number of class
    subfolders for folders (1000 for ``imagenet`` whose ``path`` is unset)."""
    if _check_name(cfg) in ("fashion_mnist", "digits"):
        return 10
    if cfg.name == "imagenet" and not cfg.path:
        return 1000
    return len(find_classes(_folder_root(cfg)))
