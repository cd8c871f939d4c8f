"""Precomputed feature-stream targets (the ``vco.feature_cache`` speed lever; off by default).

The paper computes the target tokens on the fly every step (docs/official-code.md#feature-target). The encoder is
frozen and a training input is one of a finite set of images, so the targets can be computed
once: ``jit vco cache-features`` runs the encoder over every training image **and its horizontal
flip** (the only random transform of the training pipeline: ImageFolder data is ADM
centre-cropped, deterministically, and the in-memory datasets are resized deterministically), and
training then looks the tokens up instead of running the encoder. The hybrid loss still runs the
encoder (on x-hat and on the clean images).

A CPU lever only: on a GPU the lookup (content hash, then a 50 MB copy per 128 images out of a cache
too large for memory, on the main thread) costs more than the bf16 encoder pass it saves, so
:meth:`FeatureCache.lookup` refuses images on another device (benchmarks/RESULTS.md, "V-Co feature cache").

Layout of a cache directory:

- ``features-00000.safetensors``, ...: ``keys`` (n, 2) int64 and ``tokens`` (n, T, C) in the
  stored dtype (``float16`` by default: half the disk of float32, a relative rounding error of at
  most 2^-11 = 4.9e-4; ``--dtype float32`` stores the encoder's output exactly). The raw tokens are
  stored (before the per-(position, channel) standardisation and alpha, which stay in
  ``FeatureStream.normalize``). Sizes: T x C x 2 bytes per image in fp16, e.g. 256 x 768 x 2 = 393 KB for
  DINOv2 (1 TB for ImageNet-1k with flips), 64 x 40 x 2 = 5 KB for EfficientNet-Lite0 at grid 8.
- ``index.json``: format, encoder, encoder weights, grid, image size, channels, token shape,
  dtype, key function, number of images and the shard list. Written last and atomically (a
  rebuild removes it first), so a directory with an ``index.json`` is a complete cache.

**Lookup by content, not by dataset index.** A training step only sees the images, in model range
``x = u8 / 127.5 - 1``; ``round((x + 1) * 127.5)`` recovers the uint8 pixels exactly (float32
error ~1e-5 << 0.5). The key of an image is two polynomial hashes of its N flattened uint8
values v_i (C, H, W order), each modulo a prime p near 2^54 with a fixed base r:
``H = sum_i (v_i + 1) r^i mod p``, computed in int64 on the images' device without overflow
(products < 2^62, partial sums of 256 terms < 2^62), so CPU and GPU give the same keys.

Collision argument: two different images a != b have the same hash only if r is a root of the
nonzero polynomial sum_i (a_i - b_i) X^i over GF(p) (coefficients in [-255, 255], nonzero mod p),
which has at most N - 1 roots; for a base chosen independently of the data the probability is at
most (N - 1) / p < N / 2^53.9, and with two independent (p, r) pairs at most (N / 2^53.9)^2:
about 1.2e-22 per pair of 256 px RGB images (N = 196,608). Over the ~3.3e12 pairs of an ImageNet
cache (2.56 M images with flips) that is < 4e-10, and :func:`build_cache` checks it anyway: images
with equal keys must have equal tokens (identical pixels, e.g. a symmetric image and its flip), or
the build fails. A stale image (not in the cache) matches a cached key with probability < 3e-16.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import click
import numpy as np
import torch
from torch import Tensor

from jit_core.config import ConfigError
from jit_core.durable import ensure_dir, replace_durably

log = logging.getLogger(__name__)

INDEX = "index.json"
SHARD = "features-{:05d}.safetensors"
FORMAT = 1
DTYPES = {"float16": (torch.float16, np.float16, "F16"), "float32": (torch.float32, np.float32, "F32")}
# key function: two (prime, base) pairs; the primes are the two largest below 2^54 (2^54 - 33, 2^54 - 53)
HASH_PRIMES = (18014398509481951, 18014398509481931)
HASH_BASES = (0x9E3779B97F4A7C15 % HASH_PRIMES[0], 0xBF58476D1CE4E5B9 % HASH_PRIMES[1])
HASH_NAME = "poly-mod-p-v1"
_CHUNK = 256          # terms < 2^54 summed per reduction step: < 2^62, no int64 overflow
# Measured (benchmarks/RESULTS.md, "V-Co feature cache"): per 128-image step the lookup copies 50 MB of rows
# out of a ~1 TB cache on the main thread, more than the one bf16 encoder pass it saves on a GPU.
GPU_REFUSAL = ("vco.feature_cache is a CPU lever: on a GPU its lookup (a 50 MB copy per 128 images out of the "
               "cache, on the main thread) costs more than the encoder pass it saves; unset vco.feature_cache "
               "for GPU runs")


class FeatureCacheError(ConfigError):
    """A feature cache is missing, incomplete, built for another setting, or misses an image;
    the message says how to (re)build it (a ConfigError: ``jit`` prints it as one line)."""


# ----------------------------------------------------------------------------------- content keys
@lru_cache(maxsize=8)
def _powers_cpu(n: int, base: int, prime: int) -> Tensor:
    """``base^i mod prime`` for i < n, int64 (exact Python-integer arithmetic, once per size)."""
    out = np.empty(n, dtype=np.int64)
    v = 1
    for i in range(n):
        out[i] = v
        v = v * base % prime
    return torch.from_numpy(out)


_POWERS: dict[tuple, Tensor] = {}


def _powers(n: int, base: int, prime: int, device: torch.device) -> Tensor:
    key = (n, base, prime, str(device))
    if key not in _POWERS:
        _POWERS[key] = _powers_cpu(n, base, prime).to(device)
    return _POWERS[key]


def to_uint8_values(images: Tensor) -> Tensor:
    """The uint8 pixels (as int64, flattened per image: ``(B, N)``) of images in model range
    ``u8 / 127.5 - 1`` (float32/64) or of uint8 images. Raises ValueError for images that are not
    8-bit pixels in model range (e.g. fp16/bf16 copies, augmented or synthetic images)."""
    if images.dtype == torch.uint8:
        return images.reshape(len(images), -1).to(torch.int64)
    if images.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"feature cache keys need float32 images in [-1, 1] or uint8 images, got {images.dtype}")
    scaled = (images.detach().to(torch.float64) + 1) * 127.5
    u8 = scaled.round()
    bad = ((scaled - u8).abs() > 1e-3) | (u8 < 0) | (u8 > 255)
    if bool(bad.any()):
        raise ValueError("feature cache keys need 8-bit images in model range (u8 / 127.5 - 1); these images "
                         "are not (augmented, synthetic or low-precision copies?)")
    return u8.reshape(len(images), -1).to(torch.int64)


def image_keys(images: Tensor) -> Tensor:
    """``(B, 2)`` int64 content keys of images (see the module docstring), on the images' device."""
    v = to_uint8_values(images) + 1
    B, n = v.shape
    cols = []
    for prime, base in zip(HASH_PRIMES, HASH_BASES):
        h = v * _powers(n, base, prime, v.device) % prime          # (v <= 256) * (pow < 2^54) < 2^62
        while h.shape[1] > 1:
            pad = (-h.shape[1]) % _CHUNK
            if pad:
                h = torch.cat([h, h.new_zeros(B, pad)], 1)
            h = h.view(B, -1, _CHUNK).sum(-1) % prime               # 256 terms < 2^54: sum < 2^62
        cols.append(h[:, 0] if h.shape[1] else h.new_zeros(B))
    return torch.stack(cols, 1)


def _hash_spec() -> dict:
    return {"name": HASH_NAME, "primes": list(HASH_PRIMES), "bases": list(HASH_BASES)}


# ----------------------------------------------------------------------------------- safetensors I/O
def _write_shard(path: Path, keys: Tensor, tokens: Tensor) -> None:
    from safetensors.torch import save
    blob = save({"keys": keys.contiguous(), "tokens": tokens.contiguous()})
    replace_durably(path, lambda sink: sink.write(blob))


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's JSON header and the byte offset of its data section."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return header, 8 + n


def _mmap_tensor(path: Path, name: str, np_dtype, st_dtype: str) -> np.ndarray:
    """A read-only memory map of tensor ``name`` of a safetensors file (rows are read on demand); an empty
    tensor is an empty array (a file cannot map zero bytes)."""
    header, start = _safetensors_header(path)
    info = header[name]
    if info["dtype"] != st_dtype:
        raise FeatureCacheError(f"{path}: {name} is {info['dtype']}, the index says {st_dtype}")
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end - begin != int(np.prod(shape)) * np.dtype(np_dtype).itemsize:
        raise FeatureCacheError(f"{path}: {name} has a corrupt size")
    if end == begin:
        return np.empty(shape, np_dtype)
    return np.memmap(path, dtype=np_dtype, mode="r", offset=start + begin, shape=shape)


# ----------------------------------------------------------------------------------- building
def build_cache(encoder, images_iter: Iterable, grid: int, out: str | os.PathLike, *, dtype: str = "float16",
                flip: bool = True, shard_rows: int = 4096, meta: dict | None = None, total: int | None = None,
                progress: bool = True) -> dict:
    """Write a cache of ``encoder.target_tokens(x, grid)`` for every image of ``images_iter`` (float
    batches in model range ``(B, C, H, W)``, or ``(images, labels)`` pairs) and, with ``flip``, its
    horizontal flip. ``meta`` is stored in the index (dataset, encoder weights option, ...).
    Returns the index (also written as ``out/index.json``, last)."""
    from tqdm.auto import tqdm

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if shard_rows < 1:
        raise ValueError("shard_rows must be >= 1")
    out = ensure_dir(Path(out).expanduser())
    (out / INDEX).unlink(missing_ok=True)   # until the new index is written, the folder is not a cache
    torch_dtype = DTYPES[dtype][0]
    device = getattr(encoder, "device", torch.device("cpu"))
    buf_k: list[Tensor] = []
    buf_t: list[Tensor] = []
    shards: list[dict] = []
    all_keys: list[Tensor] = []
    n_src, n_rows = 0, 0
    image_shape: list[int] | None = None
    token_shape: list[int] | None = None

    def flush(final: bool) -> None:
        nonlocal buf_k, buf_t
        if not buf_k:
            return
        keys, tokens = torch.cat(buf_k), torch.cat(buf_t)
        while len(keys) >= shard_rows or (final and len(keys)):
            name = SHARD.format(len(shards))
            _write_shard(out / name, keys[:shard_rows], tokens[:shard_rows])
            shards.append({"file": name, "rows": min(len(keys), shard_rows)})
            keys, tokens = keys[shard_rows:], tokens[shard_rows:]
        buf_k, buf_t = ([keys], [tokens]) if len(keys) else ([], [])

    bar = tqdm(total=total, unit="img", desc=f"caching {getattr(encoder, 'name', 'encoder')} features",
               disable=not progress)
    for batch in images_iter:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        x = x.to(device)
        n = len(x)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        with torch.no_grad():
            tokens = encoder.target_tokens(x, grid)
        keys = image_keys(x).cpu()
        image_shape, token_shape = list(x.shape[1:]), list(tokens.shape[1:])
        stored = tokens.to("cpu", torch_dtype)
        if not bool(torch.isfinite(stored).all()):
            raise ValueError(f"non-finite target tokens in {dtype} (max |z| = {tokens.abs().max().item():.3g}): "
                             "use --dtype float32")
        buf_k.append(keys)
        buf_t.append(stored)
        all_keys.append(keys)
        n_src += n
        n_rows += len(x)
        bar.update(n)
        if sum(len(k) for k in buf_k) >= shard_rows:
            flush(False)
    flush(True)
    bar.close()
    if n_rows == 0 or image_shape is None:
        raise ValueError("build_cache: no images")
    keep = {s["file"] for s in shards}
    for stale in out.glob("features-*.safetensors"):   # shards of an earlier, larger build
        if stale.name not in keep:
            stale.unlink()
    duplicates = _check_duplicates(out, shards, torch.cat(all_keys), dtype)
    index = {
        **(meta or {}),
        "format": FORMAT,
        "encoder": getattr(encoder, "name", type(encoder).__name__),
        "weights": str(getattr(encoder, "weights", "")),
        "grid": grid,
        "image_size": image_shape[-1],
        "channels": image_shape[0],
        "image_shape": image_shape,
        "token_shape": token_shape,
        "dtype": dtype,
        "flip": bool(flip),
        "num_source_images": n_src,
        "num_images": n_rows,
        "duplicates": duplicates,
        "key": _hash_spec(),
        "shards": shards,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(index, indent=2) + "\n"
    replace_durably(out / INDEX, lambda sink: sink.write(text.encode()))
    return index


def _check_duplicates(out: Path, shards: list[dict], keys: Tensor, dtype: str) -> int:
    """Rows with equal keys must be the same image (equal tokens); returns how many rows repeat a key."""
    k = keys.numpy()
    _, first, inverse, counts = np.unique(k, axis=0, return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    dup_rows = np.flatnonzero(counts[inverse] > 1)
    if len(dup_rows) == 0:
        return 0
    _, np_dtype, st_dtype = DTYPES[dtype]
    maps = [_mmap_tensor(out / s["file"], "tokens", np_dtype, st_dtype) for s in shards]
    starts = np.cumsum([0] + [s["rows"] for s in shards])

    def row(i):
        s = int(np.searchsorted(starts, i, "right") - 1)
        return np.asarray(maps[s][i - starts[s]], dtype=np.float32)

    for i in dup_rows:
        j = first[inverse[i]]
        if i == j:
            continue
        a, b = row(i), row(j)
        if not np.allclose(a, b, rtol=1e-2, atol=1e-2):
            raise FeatureCacheError(f"content-key collision: cache rows {j} and {i} have equal keys but different "
                                    "tokens; please report it (the cache cannot be used)")
    return int(len(k) - len(first))


# ----------------------------------------------------------------------------------- reading
def rebuild_hint(path, index: dict | None = None, **want) -> str:
    """The ``jit vco cache-features`` command line that rebuilds the cache at ``path``."""
    index = index or {}
    enc = want.get("encoder", index.get("encoder", "ENCODER"))
    weights = want.get("encoder_weights", index.get("encoder_weights"))
    parts = ["jit vco cache-features", f"--data {index.get('dataset', 'DATA')}", f"--encoder {enc}"]
    if weights:
        parts.append(f"--encoder-weights {weights}")
    parts += [f"--image-size {want.get('image_size', index.get('image_size', 'SIZE'))}",
              f"--grid {want.get('grid', index.get('grid', 'GRID'))}", f"--out {path}"]
    return " ".join(parts)


def _same_weights(a, b) -> bool:
    def norm(w):
        if w is None or w == "random":
            return w
        return os.path.realpath(os.path.expanduser(str(w)))
    return norm(a) == norm(b)


class FeatureCache:
    """A cache directory opened for lookups: all keys in memory, tokens memory-mapped."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        ipath = self.path / INDEX
        if not ipath.is_file():
            what = "does not exist" if not self.path.exists() else "is not a complete feature cache (no index.json)"
            raise FeatureCacheError(f"vco.feature_cache={path} {what}: build it with `{rebuild_hint(path)}`")
        try:
            self.index = json.loads(ipath.read_text())
        except (OSError, ValueError) as e:
            raise FeatureCacheError(f"cannot read {ipath}: {e}; rebuild it with `{rebuild_hint(path)}`") from e
        idx = self.index
        if idx.get("format") != FORMAT or idx.get("key") != _hash_spec() or idx.get("dtype") not in DTYPES:
            raise FeatureCacheError(f"vco.feature_cache={path} was written by another version (format "
                                    f"{idx.get('format')}, key {idx.get('key', {}).get('name')}): rebuild it with "
                                    f"`{rebuild_hint(path, idx)}`")
        _, self.np_dtype, st_dtype = DTYPES[idx["dtype"]]
        keys, self._tokens, rows = [], [], []
        from safetensors import safe_open
        try:
            for s in idx["shards"]:
                f = self.path / s["file"]
                with safe_open(str(f), framework="pt") as st:
                    keys.append(st.get_tensor("keys").numpy())
                self._tokens.append(_mmap_tensor(f, "tokens", self.np_dtype, st_dtype))
                rows.append(len(keys[-1]))
        except FeatureCacheError:
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable shard: same advice
            raise FeatureCacheError(f"vco.feature_cache={path} is damaged ({type(e).__name__}: {e}): rebuild it with "
                                    f"`{rebuild_hint(path, idx)}`") from e
        self._starts = np.cumsum([0] + rows)
        k = np.concatenate(keys) if keys else np.zeros((0, 2), np.int64)
        order = np.lexsort((k[:, 1], k[:, 0]))
        self._k0, self._k1, self._rows = k[order, 0], k[order, 1], order.astype(np.int64)
        self.token_shape = tuple(idx["token_shape"])

    def __len__(self) -> int:
        return len(self._rows)

    def check(self, encoder: str, encoder_weights, grid: int, image_size: int, channels: int) -> None:
        """Refuse a cache built for another encoder, encoder weights, grid, image size or channel count."""
        idx = self.index
        have = {"encoder": idx.get("encoder"), "grid": idx.get("grid"), "image size": idx.get("image_size"),
                "image channels": idx.get("channels")}
        want = {"encoder": encoder, "grid": grid, "image size": image_size, "image channels": channels}
        bad = [f"{k} {have[k]} (this run: {want[k]})" for k in want if have[k] != want[k]]
        if not _same_weights(idx.get("encoder_weights"), encoder_weights):
            bad.append(f"encoder weights {idx.get('encoder_weights') or 'default'} "
                       f"(this run: {encoder_weights or 'default'})")
        if bad:
            raise FeatureCacheError(
                f"vco.feature_cache={self.path} was built for another setting: {'; '.join(bad)}. Rebuild it with `"
                + rebuild_hint(self.path, idx, encoder=encoder, encoder_weights=encoder_weights, grid=grid,
                               image_size=image_size) + "` or unset vco.feature_cache")

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Global row of each ``(k0, k1)`` key, -1 where missing."""
        q0, q1 = keys[:, 0], keys[:, 1]
        lo = np.searchsorted(self._k0, q0, "left")
        hi = np.searchsorted(self._k0, q0, "right")
        loc = np.full(len(keys), -1, dtype=np.int64)
        for i in range(len(keys)):
            a, b = lo[i], hi[i]
            if b > a:   # entries are sorted by (k0, k1): binary search k1 within the k0 run
                p = a + int(np.searchsorted(self._k1[a:b], q1[i]))
                if p < b and self._k1[p] == q1[i]:
                    loc[i] = self._rows[p]
        return loc

    def lookup(self, images: Tensor) -> Tensor:
        """``(B, T, C)`` float32 tokens of ``images`` (model range) on their device; raises
        :class:`FeatureCacheError` naming how many images are missing, or for images not on the CPU."""
        if images.device.type != "cpu":
            raise FeatureCacheError(GPU_REFUSAL)
        try:
            keys = image_keys(images).cpu().numpy()
        except ValueError as e:
            raise FeatureCacheError(f"vco.feature_cache: {e}") from e
        loc = self.find(keys)
        missing = int((loc < 0).sum())
        if missing:
            raise FeatureCacheError(
                f"vco.feature_cache={self.path}: {missing} of {len(loc)} images of this batch are not in the cache "
                f"(built from {self.index.get('dataset', '?')}: {self.index.get('num_images')} images"
                f"{' with flips' if self.index.get('flip') else ''}). Rebuild it for this run's data with "
                f"`{rebuild_hint(self.path, self.index)}`, or unset vco.feature_cache")
        shard = np.searchsorted(self._starts, loc, "right") - 1
        out = np.empty((len(loc), *self.token_shape), dtype=self.np_dtype)
        for s in np.unique(shard):
            m = shard == s
            out[m] = self._tokens[s][loc[m] - self._starts[s]]
        return torch.from_numpy(out).to(images.device).float()


_OPEN: dict[tuple, FeatureCache] = {}


def open_cache(path: str | os.PathLike) -> FeatureCache:
    """The cache at ``path``, opened once per process (reopened if its index changed)."""
    p = Path(path).expanduser()
    try:
        stamp = (p / INDEX).stat().st_mtime_ns
    except OSError:
        stamp = None
    key = (os.path.realpath(p), stamp)
    if key not in _OPEN:
        _OPEN.clear()   # one cache at a time: keys of a large cache take memory
        _OPEN[key] = cache = FeatureCache(p)
        log.info("vco: feature cache %s: %d images, tokens %s %s", p, len(cache), cache.token_shape,
                 cache.index["dtype"])
    return _OPEN[key]


# --------------------------------------------------------------------------------------- CLI
def cache_features_command() -> click.Command:
    """``cache-features``: precompute the feature-stream targets (to be attached under ``jit vco``)."""
    from .features import ENCODER_NAMES

    @click.command("cache-features")
    @click.option("--data", required=True, help="fashion_mnist, digits, or an ImageFolder path (<root>/<class>/<img>)")
    @click.option("--encoder", type=click.Choice(ENCODER_NAMES), default="dinov2", show_default=True)
    @click.option("--encoder-weights", default=None, help="local weights file ('random': tests only)")
    @click.option("--image-size", type=int, default=256, show_default=True)
    @click.option("--grid", type=int, default=16, show_default=True, help="token grid = image_size / patch_size")
    @click.option("--batch-size", type=int, default=64, show_default=True, help="source images per encoder batch")
    @click.option("--num-workers", type=int, default=2, show_default=True)
    @click.option("--dtype", type=click.Choice(tuple(DTYPES)), default="float16", show_default=True,
                  help="stored token dtype (float16: half the disk, relative error <= 4.9e-4)")
    @click.option("--flip/--no-flip", default=True, show_default=True,
                  help="also cache each image's horizontal flip (needed when training with data.flip=true)")
    @click.option("--shard-rows", type=int, default=4096, show_default=True, help="images per shard file")
    @click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:i]")
    @click.option("--out", type=click.Path(file_okay=False), required=True, help="cache directory")
    def cache_features(data, encoder, encoder_weights, image_size, grid, batch_size, num_workers, dtype, flip,
                       shard_rows, device, out):
        """Run the frozen encoder over every training image and its flip and store the target tokens,
        for training with vco.feature_cache=OUT (speed lever; the paper computes them every step)."""
        from torch.utils.data import DataLoader

        from jit_core.data import build_dataset, to_model_range

        from .calibration import _data_config
        from .features import build_encoder

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dataset = build_dataset(_data_config(data, image_size), train=True)
        enc = build_encoder(encoder, encoder_weights, device)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        images = (to_model_range(u8) for u8, _ in loader)
        index = build_cache(enc, images, grid, out, dtype=dtype, flip=flip, shard_rows=shard_rows,
                            total=len(dataset), meta={"dataset": data, "encoder_weights": encoder_weights})
        size = sum((Path(out) / s["file"]).stat().st_size for s in index["shards"])
        click.echo(f"cached {index['num_images']} images ({index['num_source_images']} source images"
                   f"{' + flips' if flip else ''}; {index['duplicates']} repeated), tokens "
                   f"{tuple(index['token_shape'])} {dtype}, {len(index['shards'])} shards, {size / 2 ** 20:.1f} MiB")
        click.echo(f"wrote {Path(out) / INDEX}; train with vco.feature_cache={out}")

    return cache_features


__all__ = ["FeatureCache", "FeatureCacheError", "build_cache", "cache_features_command", "image_keys", "open_cache"]
