"""Sample-quality metrics: Fréchet distance, improved precision/recall, and FID/IS through torch-fidelity.

FID and IS follow the evaluation protocol (docs/official-code.md#evaluation, 2): torch-fidelity's
``inception-v3-compat`` extractor (the TF 2015-12-05 FID Inception, TF1-style bilinear resize to 299),
FID on the 2048-d pool features against a reference ``.npz`` (keys ``mu``, ``sigma``), IS on
``logits_unbiased`` with 10 splits shuffled with seed 2020. PyPI's torch-fidelity has no
``fid_statistics_file`` (that is the LTH14 fork), so the sample features are extracted with
torch-fidelity's own extractor and the Fréchet distance to the reference statistics is computed here.

Offline use: pass the standard weights file with ``inception_weights=PATH`` (CLI ``--inception-weights``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from jit_core import durable

log = logging.getLogger(__name__)

INCEPTION = "inception-v3-compat"
INCEPTION_URL_NAME = "weights-inception-2015-12-05-6726825d.pth"
IS_SPLITS, IS_RNG_SEED = 10, 2020
RESIZE_PATH = "torch-fidelity TF1-compatible bilinear resize to 299x299 inside the extractor"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
Images = torch.Tensor | np.ndarray | str | os.PathLike


class InceptionWeightsError(RuntimeError):
    """The FID Inception weights are not available (offline and no local file given)."""


# ----------------------------------------------------------------------------------- basic statistics
def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (read in 1 MiB chunks; cached per path, size and mtime)."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _np64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, float64) of ``(N, D)`` features."""
    f = _np64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_stats needs (N >= 2, D) features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64.

    If the matrix square root fails (non-finite) or has a non-negligible imaginary part (nearly
    singular covariances, e.g. fewer samples than dimensions), ``eps * I`` is added to both
    covariances and the root recomputed; the (tiny) imaginary residue is then dropped.
    """
    mu1, mu2, s1, s2 = _np64(mu1), _np64(mu2), _np64(sigma1), _np64(sigma2)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    import scipy.linalg  # on first use: importing it costs ~0.5 s of every `jit` command's start
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    bad = not np.isfinite(covmean).all()
    if not bad and np.iscomplexobj(covmean):
        bad = np.abs(covmean.imag).max() > 1e-3 * max(1.0, np.abs(covmean.real).max())
    if bad:
        log.warning("Fréchet distance: singular product of covariances; adding %g to the diagonals", eps)
        offset = np.eye(s1.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def frechet_distance_to_features(features, mu_ref, sigma_ref) -> float:
    """Fréchet distance between the Gaussian fit of ``(N, D)`` features and reference statistics.

    Equal to ``frechet_distance(*feature_stats(features), mu_ref, sigma_ref)``. When N <= D the sample
    covariance is S = Y^T Y with Y = (X - mean) / sqrt(N - 1), and the non-zero eigenvalues of
    S_ref S equal those of the small PSD matrix Y S_ref Y^T, so Tr (S_ref S)^(1/2) is computed exactly
    from an N x N eigendecomposition instead of a D x D matrix square root (fast for few samples).
    """
    x = _np64(features)
    n, d = x.shape
    if n > d:
        return frechet_distance(*feature_stats(x), mu_ref, sigma_ref)
    mu_r, s_r = _np64(mu_ref), _np64(sigma_ref)
    if n < 2 or mu_r.shape != (d,) or s_r.shape != (d, d):
        raise ValueError(f"features {x.shape} do not match reference mu {mu_r.shape} / sigma {s_r.shape}")
    mu = x.mean(axis=0)
    y = (x - mu) / np.sqrt(n - 1)
    eig = np.linalg.eigvalsh(y @ s_r @ y.T)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu - mu_r
    return float(diff @ diff + np.einsum("ij,ij->", y, y) + np.trace(s_r) - 2 * tr_covmean)


def _kth_radii(feats: torch.Tensor, k: int, rows: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    out = []
    for i in range(0, len(feats), rows):
        d = torch.cdist(feats[i:i + rows], feats)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _coverage(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, rows: int) -> float:
    """Fraction of ``queries`` inside at least one ball (points[j], radii[j])."""
    hit = 0
    for i in range(0, len(queries), rows):
        d = torch.cdist(queries[i:i + rows], points)
        hit += int((d <= radii[None]).any(dim=1).sum())
    return hit / len(queries)


def precision_recall(real_feats, fake_feats, k: int = 3, max_elements: int = 2 ** 25) -> dict:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN radii.

    Precision: the fraction of fake samples inside the real manifold (the union of balls around
    each real sample with radius = distance to its k-th nearest real neighbour); recall: the
    fraction of real samples inside the fake manifold. Distances are computed in row blocks of at
    most ``max_elements`` entries (float32; float64 for small sets).
    """
    real, fake = (torch.as_tensor(_np64(x)) for x in (real_feats, fake_feats))
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision_recall needs (N, D) features of equal D, got {tuple(real.shape)}, {tuple(fake.shape)}")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision_recall needs more than k={k} samples in each set")
    if len(real) * len(fake) > 1e7:
        real, fake = real.float(), fake.float()
    rows = max(1, max_elements // max(len(real), len(fake)))
    r_real, r_fake = _kth_radii(real, k, rows), _kth_radii(fake, k, rows)
    return {"precision": _coverage(fake, real, r_real, rows), "recall": _coverage(real, fake, r_fake, rows),
            "k": k, "num_real": len(real), "num_fake": len(fake)}


# ----------------------------------------------------------------------------------- Inception (torch-fidelity)
def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in
               ("HF_HUB_OFFLINE", "JIT_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _missing_weights(reason: str) -> InceptionWeightsError:
    return InceptionWeightsError(f"FID Inception weights unavailable ({reason}): pass the standard torch-fidelity "
                                 f"weights file ({INCEPTION_URL_NAME}) with --inception-weights PATH")


def check_inception_weights(weights: str | os.PathLike | None = None) -> None:
    """Fail before any sampling if FID's Inception weights are missing, unreadable or not Inception weights.

    ``weights``: a local file (read with ``weights_only=True`` and checked for the Inception layers); None:
    the torch hub cache, or a download when online.
    """
    if weights is None:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL_NAME
        if not cached.is_file() and _offline():
            raise _missing_weights("offline and not in the torch hub cache")
        return
    if not Path(weights).is_file():
        raise _missing_weights(f"{weights} is not a file")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unreadable file is the same user error
        raise _missing_weights(f"{weights} is not readable ({type(e).__name__}); it is damaged or not a torch file") from e
    if not isinstance(state, dict) or not any("Conv2d_1a_3x3" in str(k) for k in state):
        raise _missing_weights(f"{weights} holds no Inception-v3 layers (no Conv2d_1a_3x3): not the FID weights")


def load_inception(weights: str | os.PathLike | None = None, device="cpu",
                   features=("2048", "logits_unbiased")):
    """torch-fidelity's ``inception-v3-compat`` extractor, from ``weights`` if given.

    Without ``weights`` torch-fidelity downloads into the torch hub cache; offline (no cached file and
    ``HF_HUB_OFFLINE``/``JIT_OFFLINE`` set, or the download fails) this raises a one-line
    :class:`InceptionWeightsError` naming ``--inception-weights PATH``.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    if weights is not None:
        if not Path(weights).is_file():
            raise _missing_weights(f"{weights} is not a file")
        model = FeatureExtractorInceptionV3(INCEPTION, list(features), feature_extractor_weights_path=str(weights))
    else:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL_NAME
        if not cached.is_file() and _offline():
            raise _missing_weights("offline and not in the torch hub cache")
        try:
            model = FeatureExtractorInceptionV3(INCEPTION, list(features), verbose=False)
        except Exception as e:
            raise _missing_weights(f"download failed: {type(e).__name__}") from e
    return model.to(device).eval()


def inception_provenance(weights: str | os.PathLike | None) -> dict:
    import torch_fidelity
    path = Path(weights) if weights else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL_NAME
    return {"tool": "torch-fidelity", "tool_version": torch_fidelity.__version__, "extractor": INCEPTION,
            "feature_layer_fid": "2048", "feature_layer_isc": "logits_unbiased",
            "weights_path": str(path), "weights_sha256": file_sha256(path) if path.is_file() else None,
            "resize": RESIZE_PATH, "isc_splits": IS_SPLITS, "isc_rng_seed": IS_RNG_SEED}


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.suffix.lower() in IMAGE_EXTS and p.is_file() and not p.name.startswith("."))


class _ImageSet(torch.utils.data.Dataset):
    """uint8 (3, H, W) tensors from an in-memory batch or image files (optionally transformed)."""

    def __init__(self, source: Images, transform=None, max_images: int | None = None, recursive: bool = False):
        if isinstance(source, (str, os.PathLike)):
            self.files: list[Path] = list_images(source, recursive)
            self.images: torch.Tensor | None = None
            if not self.files:
                raise ValueError(f"no images found in {source}")
            if max_images and len(self.files) > max_images:  # evenly spaced in sorted order: every class folder
                self.files = [self.files[i] for i in np.linspace(0, len(self.files) - 1, max_images).round().astype(int)]
        else:
            x = torch.as_tensor(source)
            if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):  # NHWC
                x = x.permute(0, 3, 1, 2)
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise ValueError(f"expected uint8 (N, C, H, W) images, got {x.dtype} {tuple(x.shape)}")
            self.files, self.images = [], x[:max_images]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.files)

    def __getitem__(self, i):
        if self.images is not None:
            x = self.images[i]
        else:
            from PIL import Image
            with Image.open(self.files[i]) as im:
                im = im.convert("RGB")
                im = self.transform(im) if self.transform else im
                x = torch.from_numpy(np.array(im)).permute(2, 0, 1)
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


@torch.no_grad()
def inception_features(images: Images, extractor, batch_size: int = 64, progress: bool = False,
                       transform=None, max_images: int | None = None, num_workers: int = 0,
                       recursive: bool = False) -> dict:
    """``{"2048": (N, 2048), "logits_unbiased": (N, 1008)}`` float32 features of uint8 images or a folder.

    ``transform`` (PIL -> PIL) applies to image files only; grayscale tensors are repeated to RGB.
    """
    from jit_core.progress import track
    data = _ImageSet(images, transform, max_images, recursive)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=num_workers)
    device = next(extractor.parameters()).device
    out: dict[str, list] = {name: [] for name in extractor.features_list}
    for batch in track(loader, desc="inception features", unit="batch", enabled=progress, leave=False):
        for name, f in zip(extractor.features_list, extractor(batch.to(device))):
            out[name].append(f.cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def load_ref_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(mu, sigma, info)`` from a reference npz (keys ``mu``, ``sigma``; optional ``n``, ``provenance``)."""
    with np.load(path) as z:
        if "mu" not in z or "sigma" not in z:
            raise ValueError(f"{path} has no 'mu'/'sigma' arrays (keys: {', '.join(z.files)})")
        mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
        info = {"file": str(Path(path).resolve()), "sha256": file_sha256(path),
                "num_images": int(z["n"]) if "n" in z else None}
        if "provenance" in z:
            info["provenance"] = json.loads(str(z["provenance"]))
    return mu, sigma, info


def fid_resampler(features, mu_ref, sigma_ref, device=None):
    """``f(idx)``: FID of ``features[idx]`` against fixed reference statistics (see ``stats.frechet_resampler``).

    With more samples than dimensions (50k x 2048) each resample needs a 2048 x 2048 covariance and
    eigendecomposition, so that case runs in float64 torch on ``device`` (seconds per resample on CPU, a
    fraction of a second on a GPU); otherwise the numpy N x N form of :mod:`jit_core.eval.stats` is used.
    """
    from jit_core.eval import stats
    x = _np64(features)
    n, d = x.shape
    if n <= d:
        return stats.frechet_resampler(x, mu_ref, sigma_ref)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    xt = torch.as_tensor(x, device=dev)
    mu_r = torch.as_tensor(_np64(mu_ref), device=dev)
    s_r = torch.as_tensor(_np64(sigma_ref), device=dev)
    w, v = torch.linalg.eigh((s_r + s_r.T) / 2)
    a = (v * w.clamp(min=0).sqrt()) @ v.T
    tr_r = torch.trace(s_r)

    def fd(idx):
        xs = xt[torch.as_tensor(idx, device=dev)]
        mu = xs.mean(0)
        c = xs - mu
        s = c.T @ c / (len(idx) - 1)
        eig = torch.linalg.eigvalsh(a @ s @ a)
        diff = mu - mu_r
        return float(diff @ diff + torch.trace(s) + tr_r - 2 * eig.clamp(min=0).sqrt().sum())
    return fd


def fidelity_intervals(feats: dict, mu_r, sigma_r, n_boot: int, level: float = 0.95, seed: int = 0,
                       device=None, isc: bool = True) -> tuple[dict, str]:
    """Bootstrap intervals of FID (generated features resampled, reference fixed) and IS (samples resampled).

    Precision / recall get none: their k-NN radii are not defined on a resample with repeated points."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    from jit_core.eval import stats
    n = len(feats["2048"])
    out = {}
    if mu_r is not None:
        out["fid"] = list(stats.bootstrap_interval(fid_resampler(feats["2048"], mu_r, sigma_r, device),
                                                   np.arange(n), n_boot, level, seed, recentre=True))
    if isc:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        logits = feats["logits_unbiased"].to(dev)
        out["inception_score"] = list(stats.bootstrap_interval(
            lambda idx: isc_features_to_metric(logits[torch.as_tensor(idx, device=dev)], IS_SPLITS, True,
                                               IS_RNG_SEED)["inception_score_mean"], np.arange(n), n_boot, level, seed,
            recentre=True))
    what = "reference statistics fixed (fid); IS recomputed on the resampled samples (recentred); no P/R interval"
    return out, stats.interval_method(n, n_boot, level, what)


def fidelity_metrics(samples: Images, ref_stats: str | os.PathLike | None = None,
                     ref_dir: str | os.PathLike | None = None, inception_weights: str | os.PathLike | None = None,
                     isc: bool = True, fid: bool = True, prc: bool = False, k: int = 3, batch_size: int = 64,
                     device=None, progress: bool = False, num_workers: int | None = None, n_boot: int = 200,
                     level: float = 0.95, boot_seed: int = 0) -> dict:
    """FID / IS / precision-recall of ``samples`` (a folder of PNGs or uint8 ``(N, C, H, W)`` images).

    FID against ``ref_stats`` (npz) if given, else against the features of the images in ``ref_dir``.
    P/R (k-NN, on the 2048-d features) needs ``ref_dir``. Returns metric values plus ``provenance``, and
    ``intervals`` (bootstrap over the samples' features, :func:`fidelity_intervals`; ``n_boot=0``: none).
    Folders are decoded by ``num_workers`` loader processes (default: up to 4).
    """
    from torch_fidelity.metric_isc import isc_features_to_metric
    if fid and ref_stats is None and ref_dir is None:
        raise ValueError("FID needs a reference: --ref-stats PATH (npz with mu, sigma) or a reference image folder")
    if prc and ref_dir is None:
        raise ValueError("precision/recall needs a reference image folder (ref_dir)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = load_inception(inception_weights, device)
    if num_workers is None:
        num_workers = min(4, os.cpu_count() or 1) if isinstance(samples, (str, os.PathLike)) else 0
    feats = inception_features(samples, extractor, batch_size, progress, num_workers=num_workers)
    res: dict = {"num_images": len(feats["2048"])}
    prov = inception_provenance(inception_weights)
    if isc:
        s = isc_features_to_metric(feats["logits_unbiased"], IS_SPLITS, True, IS_RNG_SEED)
        res["inception_score"], res["inception_score_std"] = s["inception_score_mean"], s["inception_score_std"]
    real = None
    if ref_dir is not None and (prc or (fid and ref_stats is None)):
        real = inception_features(ref_dir, extractor, batch_size, progress, num_workers=num_workers)["2048"]
        prov["reference_dir"] = {"path": str(Path(ref_dir).resolve()), "num_images": len(real)}
    mu_r = sigma_r = None
    if fid:
        if ref_stats is not None:
            mu_r, sigma_r, info = load_ref_stats(ref_stats)
            prov["reference_stats"] = info
        else:
            mu_r, sigma_r = feature_stats(real)
        res["fid"] = frechet_distance_to_features(feats["2048"], mu_r, sigma_r)
    res["intervals"], res["interval_method"] = {}, None
    if n_boot and (fid or isc):
        res["intervals"], res["interval_method"] = fidelity_intervals(feats, mu_r, sigma_r, n_boot, level, boot_seed,
                                                                      device, isc)
    if prc:
        pr = precision_recall(real, feats["2048"], k=k)
        res["precision"], res["recall"] = pr["precision"], pr["recall"]
        prov["prc"] = {"k": k, "features": "inception-v3-compat pool 2048", "num_real": pr["num_real"]}
    res["provenance"] = prov
    return res


def random_inception_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save a randomly initialised ``inception-v3-compat`` state dict (for offline tests only: NOT a metric).

    Convolutions get He-normal init so the pool features are not vanishingly small.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # skip loading: keep the random init
            return None

    path = Path(path)
    durable.ensure_dir(path.parent)
    durable.save_torch(path, {})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _Unloaded(INCEPTION, ["2048"], feature_extractor_weights_path=str(path))
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=m.in_features ** -0.5)
    durable.save_torch(path, model.state_dict())
    return path


# ----------------------------------------------------------------------------------- jit ref-stats
def compute_ref_stats(folder: str | os.PathLike, out: str | os.PathLike, image_size: int = 256,
                      inception_weights: str | os.PathLike | None = None, max_images: int | None = None,
                      batch_size: int = 64, device=None, num_workers: int = 0, progress: bool = True) -> dict:
    """ADM-center-crop every image under ``folder`` (recursively, sorted) and save Inception ``mu``/``sigma``."""
    from jit_core.data import adm_center_crop
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = load_inception(inception_weights, device, features=("2048",))
    crop = functools.partial(adm_center_crop, size=image_size)
    feats = inception_features(folder, extractor, batch_size, progress, transform=crop, max_images=max_images,
                               num_workers=num_workers, recursive=True)["2048"]
    mu, sigma = feature_stats(feats)
    prov = {**inception_provenance(inception_weights), "folder": str(Path(folder).resolve()), "num_images": len(feats),
            "image_size": image_size, "preprocessing": "ADM center crop (jit_core.data.adm_center_crop), RGB",
            "selection": f"{max_images} files evenly spaced in sorted path order" if max_images else "all files",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    out = Path(out)
    durable.ensure_dir(out.parent)
    durable.save_npz(out, mu=mu, sigma=sigma, n=np.int64(len(feats)), provenance=np.array(json.dumps(prov)))
    return {"out": str(out), "num_images": len(feats), "sha256": file_sha256(out)}


def ref_stats_command():
    """The ``jit ref-stats`` click command."""
    import click

    @click.command("ref-stats")
    @click.argument("image_folder", type=click.Path(exists=True, file_okay=False))
    @click.option("--out", required=True, type=click.Path(dir_okay=False), help="output .npz (mu, sigma, n, provenance)")
    @click.option("--image-size", default=256, show_default=True, help="ADM center-crop size")
    @click.option("--inception-weights", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="local torch-fidelity inception-v3-compat weights (needed offline)")
    @click.option("--max-images", type=int, default=None, help="use N images, evenly spaced in sorted path order")
    @click.option("--batch-size", default=64, show_default=True)
    @click.option("--num-workers", default=0, show_default=True)
    @click.option("--device", default=None, help="cuda | cpu (default: cuda if available)")
    def cmd(image_folder, out, image_size, inception_weights, max_images, batch_size, num_workers, device):
        """Reference Inception statistics (mu, sigma) of IMAGE_FOLDER for FID."""
        try:
            info = compute_ref_stats(image_folder, out, image_size, inception_weights, max_images, batch_size,
                                     device, num_workers)
        except InceptionWeightsError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"wrote {info['out']} ({info['num_images']} images, sha256 {info['sha256'][:16]}...)")

    return cmd


if __name__ == "__main__":  # pragma: no cover
    ref_stats_command()(sys.argv[1:])
