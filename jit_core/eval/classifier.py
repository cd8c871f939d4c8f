"""The embedded datasets' metric: a Fréchet distance in a small classifier's feature space (NOT FID).

For Fashion-MNIST and digits runs there is no offline Inception, and grading V-Co with its own
feature encoder (EfficientNet-Lite0) would be circular. So a small CNN, trained here once on the
dataset's train split and cached, provides:

- ``fd_classifier``: the Fréchet distance between the 128-d penultimate features of the generated
  images and of the real held-out split (Fashion-MNIST: the 10k test split; digits: a fixed 1/6 split);
- ``classifier_accuracy``: how often the classifier recognises the conditioning class of a sample;
- ``fd_classifier_real_train``: the same distance for as many *real train* images (class-balanced, as
  the samples), i.e. the floor a perfect generator would reach at this sample count.

Cache: ``${JIT_CACHE_DIR:-~/.cache/jit-vco}/classifier-<dataset>-<size>.safetensors`` + ``.json`` (test accuracy,
epochs, seed, date), and ``.reference-<sha>.npz`` beside it (the held-out statistics and the real-train floors of
that classifier file). Training takes about a minute on 2 CPU cores for Fashion-MNIST (two epochs).
"""
from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jit_core import durable
from jit_core.eval.fid import feature_stats, file_sha256, frechet_distance_to_features

log = logging.getLogger(__name__)

ARCH = "SmallCNN-v1"  # bump when the architecture or training recipe changes: invalidates the cache
DATASETS = ("fashion_mnist", "digits")
PRETTY = {"fashion_mnist": "Fashion-MNIST", "digits": "digits"}
DEFAULT_EPOCHS = {"fashion_mnist": 2, "digits": 40}
FEATURE_DIM = 128


def metric_label(dataset_name: str) -> str:
    return f"Fréchet distance in a {PRETTY.get(dataset_name, dataset_name)} classifier's feature space (not FID)"


def cache_dir() -> Path:
    return Path(os.environ.get("JIT_CACHE_DIR") or Path.home() / ".cache" / "jit-vco").expanduser()


class SmallCNN(nn.Module):
    """Three stride-2 conv-BN-ReLU blocks (32-64-128 channels) -> global average pool -> linear head.

    Small on purpose: it trains on 60k images in about a minute on 2 CPU cores.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        chans, layers = (in_channels, 32, 64, FEATURE_DIM), []
        for a, b in itertools.pairwise(chans):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] -> float [-1, 1]; float inputs are taken to be in [-1, 1] already."""
        return x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=4)
def load_split(dataset_name: str, image_size: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 (N, 1, S, S), int64 labels)`` for split ``train`` or ``test``, preprocessed as for training
    a JiT (Fashion-MNIST at 32 px: padded 28 -> 32). Digits has no test split: a fixed 1/6 is held out."""
    from jit_core.config import DataConfig
    from jit_core.data import build_dataset
    if dataset_name not in DATASETS:
        raise ValueError(f"no classifier metric for dataset {dataset_name!r}: only {', '.join(DATASETS)}")
    cfg = DataConfig(name=dataset_name, image_size=image_size, flip=False, num_workers=0, pin_memory=False)
    ds = build_dataset(cfg, train=(split == "train") or dataset_name == "digits")
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    if dataset_name == "digits":
        held_out = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1234))[: len(ds) // 6]
        mask = torch.zeros(len(ds), dtype=torch.bool)
        mask[held_out] = True
        keep = mask if split == "test" else ~mask
        images, labels = images[keep], labels[keep]
    return images, labels


def reference_description(dataset_name: str) -> str:
    return "test split (10k)" if dataset_name == "fashion_mnist" else "held-out 1/6 of digits (seeded split, 299)"


# ----------------------------------------------------------------------------------- training and cache
@torch.no_grad()
def predict(model: SmallCNN, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features (N, 128), logits (N, classes))`` in eval mode, on the model's device."""
    device = next(model.parameters()).device
    model.eval()
    feats, logits = [], []
    for i in range(0, len(images), batch_size):
        f = model.features(images[i:i + batch_size].to(device))
        feats.append(f.cpu())
        logits.append(model.head(f).cpu())
    return torch.cat(feats), torch.cat(logits)


def classifier_features(model: SmallCNN, images: torch.Tensor) -> torch.Tensor:
    """``(N, 128)`` penultimate (global-average-pooled) features of uint8 or [-1, 1] images."""
    return predict(model, images)[0]


def train_classifier(dataset_name: str, image_size: int, epochs: int | None = None, seed: int = 0,
                     device="cpu", batch_size: int = 128, lr: float = 3e-3) -> tuple[SmallCNN, dict]:
    """Train the small CNN on the train split (AdamW, one-cycle lr); report held-out accuracy."""
    epochs = epochs or DEFAULT_EPOCHS[dataset_name]
    x, y = load_split(dataset_name, image_size, "train")
    xt, yt = load_split(dataset_name, image_size, "test")
    t0 = time.time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(x.shape[1], int(y.max()) + 1).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        per_epoch = len(x) // batch_size
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * per_epoch)
        for epoch in range(epochs):
            log.info("classifier for the %s metric: epoch %d/%d (%.0f s)", dataset_name, epoch + 1, epochs,
                     time.time() - t0)
            model.train()
            perm = torch.randperm(len(x))
            for b in range(per_epoch):
                idx = perm[b * batch_size:(b + 1) * batch_size]
                loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    acc = float((predict(model, xt)[1].argmax(1) == yt).float().mean())
    info = {"arch": ARCH, "dataset": dataset_name, "image_size": image_size, "test_accuracy": acc,
            "test_split": reference_description(dataset_name), "train_images": len(x), "epochs": epochs,
            "seed": seed, "batch_size": batch_size, "lr": lr, "train_seconds": round(time.time() - t0, 1),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__}
    log.info("trained the %s classifier: %.2f%% held-out accuracy in %.0f s", dataset_name, 100 * acc,
             info["train_seconds"])
    return model.eval(), info


def classifier_path(dataset_name: str, image_size: int) -> Path:
    return cache_dir() / f"classifier-{dataset_name}-{image_size}.safetensors"


def get_classifier(dataset_name: str, image_size: int, device="cpu", retrain: bool = False) -> tuple[SmallCNN, dict]:
    """The cached classifier for (dataset, image size), trained and cached on first use."""
    from safetensors.torch import load_file
    path = classifier_path(dataset_name, image_size)
    meta = path.with_suffix(".json")
    if not retrain and path.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        if info.get("arch") == ARCH:
            sd = load_file(str(path))
            model = SmallCNN(sd["body.0.weight"].shape[1], sd["head.weight"].shape[0])
            model.load_state_dict(sd)
            return model.to(device).eval(), {**info, "file": str(path), "sha256": file_sha256(path)}
    log.info("training the %s classifier for the embedded metric (cached in %s)", dataset_name, path)
    model, info = train_classifier(dataset_name, image_size, device=device)
    durable.ensure_dir(path.parent)
    durable.save_safetensors(path, {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    durable.write_json(meta, info)
    return model, {**info, "file": str(path), "sha256": file_sha256(path)}


def _balanced_subset(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of n images, class-major and balanced like the generated set (first images of each class)."""
    classes = int(labels.max()) + 1
    want = (torch.arange(n) * classes) // n
    pools = {c: (labels == c).nonzero().flatten().tolist() for c in range(classes)}
    return torch.tensor([pools[int(c)].pop(0) for c in want])


def fmnist_metrics(images_u8: torch.Tensor, labels: torch.Tensor, dataset_name: str = "fashion_mnist",
                   device="cpu", n_boot: int = 1000, level: float = 0.95, boot_seed: int = 0) -> dict:
    """Classifier metrics of generated uint8 ``(N, 1, S, S)`` images conditioned on ``labels``.

    ``intervals``: percentile bootstrap intervals of ``fd_classifier`` (the generated features resampled, the
    reference statistics fixed) and of ``classifier_accuracy`` (the samples resampled); ``n_boot=0``: none.
    """
    images_u8, labels = torch.as_tensor(images_u8), torch.as_tensor(labels).long()
    if images_u8.dtype != torch.uint8 or images_u8.ndim != 4 or len(images_u8) != len(labels):
        raise ValueError(f"expected uint8 (N, C, S, S) images and N labels, got {images_u8.dtype} "
                         f"{tuple(images_u8.shape)} and {tuple(labels.shape)}")
    if len(images_u8) < 2:
        raise ValueError("the classifier Fréchet distance needs at least 2 images")
    size = images_u8.shape[-1]
    model, info = get_classifier(dataset_name, size, device)
    feats, logits = predict(model, images_u8)
    ref_feats, _ = _reference_features(dataset_name, size, info["sha256"], device)
    mu_r, sigma_r = ref_feats
    fd = frechet_distance_to_features(feats, mu_r, sigma_r)
    floor = _real_train_floor(dataset_name, size, info["sha256"], model, len(images_u8), mu_r, sigma_r)
    correct = (logits.argmax(1) == labels).double().numpy()
    intervals, method = {}, None
    if n_boot:
        from jit_core.eval import stats
        intervals = {"fd_classifier": list(stats.bootstrap_interval(
                         stats.frechet_resampler(feats, mu_r, sigma_r), np.arange(len(feats)), n_boot, level, boot_seed,
                         recentre=True)),
                     "classifier_accuracy": list(stats.bootstrap_interval(np.mean, correct, n_boot, level, boot_seed))}
        method = stats.interval_method(len(feats), n_boot, level, "reference statistics fixed (fd_classifier); "
                                       "accuracy over the resampled samples")
    return {
        "fd_classifier": fd,
        "fd_classifier_label": metric_label(dataset_name),
        "fd_classifier_real_train": floor,
        "classifier_accuracy": float(correct.mean()),
        "intervals": intervals,
        "interval_method": method,
        "reference": reference_description(dataset_name),
        "classifier_test_accuracy": info["test_accuracy"],
        "num_images": len(images_u8),
        "provenance": {"metric": metric_label(dataset_name), "classifier": info,
                       "features": f"{FEATURE_DIM}-d penultimate (global average pool) features of {ARCH}",
                       "reference": reference_description(dataset_name),
                       "independent_of": "V-Co's feature encoder (EfficientNet-Lite0): trained here from scratch",
                       "fd_classifier_real_train": "same distance for as many class-balanced real train images "
                                                   "(the floor at this sample count)"},
    }


# ----------------------------------------------------------------------------------- the reference, cached
# Every evaluation needs the held-out split's feature statistics and the real-train floor at its sample count; both
# depend only on the classifier file, yet computing them (loading both splits, 10k + N predictions) took 5-7 s of
# a 30 s tiny evaluation. They are cached beside the classifier, keyed by its SHA-256, and recomputed whenever the
# file is absent, unreadable or not what save_reference writes.
def reference_path(dataset_name: str, image_size: int, classifier_sha: str) -> Path:
    return cache_dir() / f"classifier-{dataset_name}-{image_size}.reference-{classifier_sha[:16]}.npz"


def save_reference(path: Path, mu: np.ndarray, sigma: np.ndarray, n: int, floors: dict[int, float]) -> None:
    """The reference statistics (``mu``, ``sigma`` over ``n`` held-out images) and the real-train floor per
    sample count, in one npz (written atomically)."""
    durable.save_npz(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), n=np.int64(n),
                     **{f"floor_{k}": np.float64(v) for k, v in floors.items()})


def read_reference(path: Path, dim: int = FEATURE_DIM) -> dict | None:
    """``{"mu", "sigma", "n", "floors"}`` from :func:`save_reference`'s file, or None when it is absent or holds
    anything else (wrong keys, shapes, types, non-finite values): the caller recomputes and rewrites it."""
    import zipfile
    if not path.is_file() or path.is_symlink():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    mu, sigma, n = data.get("mu"), data.get("sigma"), data.get("n")
    if mu is None or sigma is None:
        return None
    arrays_ok = all(isinstance(a, np.ndarray) and a.dtype == np.float64 and np.isfinite(a).all() for a in (mu, sigma))
    if not arrays_ok or mu.shape != (dim,) or sigma.shape != (dim, dim) or not isinstance(n, np.ndarray) or \
            n.shape != () or n.dtype != np.int64 or int(n) < 2:
        return None
    floors = {}
    for key, value in data.items():
        count = key.removeprefix("floor_")
        if key.startswith("floor_") and count.isdigit() and value.shape == () and value.dtype == np.float64 and \
                np.isfinite(value):
            floors[int(count)] = float(value)
    return {"mu": mu, "sigma": sigma, "n": int(n), "floors": floors}


@functools.lru_cache(maxsize=8)
def _reference_features(dataset_name: str, image_size: int, classifier_sha: str, device="cpu"):
    """Mean and covariance of the held-out split's classifier features (cached per classifier file, on disk too)."""
    path = reference_path(dataset_name, image_size, classifier_sha)
    cached = read_reference(path)
    if cached is not None:
        return (cached["mu"], cached["sigma"]), cached["n"]
    model, _ = get_classifier(dataset_name, image_size, device)
    xt, _ = load_split(dataset_name, image_size, "test")
    mu, sigma = feature_stats(predict(model, xt)[0])
    durable.ensure_dir(path.parent)
    save_reference(path, mu, sigma, len(xt), {})
    return (mu, sigma), len(xt)


def _real_train_floor(dataset_name: str, image_size: int, classifier_sha: str, model, n: int, mu_r, sigma_r):
    """The distance of ``n`` class-balanced real train images to the reference (None: the split has fewer)."""
    path = reference_path(dataset_name, image_size, classifier_sha)
    cached = read_reference(path)
    if cached is not None and n in cached["floors"]:
        return cached["floors"][n]
    train_x, train_y = load_split(dataset_name, image_size, "train")
    if n > len(train_x):
        return None
    real = predict(model, train_x[_balanced_subset(train_y, n)])[0]
    floor = frechet_distance_to_features(real, mu_r, sigma_r)
    if cached is not None:      # another process may have added floors meanwhile: at worst one is computed again
        save_reference(path, cached["mu"], cached["sigma"], cached["n"], {**cached["floors"], n: floor})
    return floor


def prepare_reference(dataset_name: str, image_size: int) -> None:
    """The classifier and its reference statistics, computed and cached now (``jit study`` before its lanes)."""
    _, info = get_classifier(dataset_name, image_size)
    _reference_features(dataset_name, image_size, info["sha256"])
