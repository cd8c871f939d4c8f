"""The in-repository copy of the official parity fixtures (``tests/fixtures/official/``) and how to read it.

Each ``<name>.safetensors`` there holds what one official fixture folder holds, cut down so that the whole
copy stays small (its README says what was cut and why). A key is stored in one of four forms:

- ``key``: the tensor itself;
- ``key#u8``: uint8 pixel values k of a tensor that is exactly ``k / 255 * 2 - 1`` (V-Co's training images);
- ``key#sample`` + ``key#shape`` (+ ``key#stats``): a probe of a large tensor the tests only compare
  against: its values at :func:`probe_positions` of the flattened tensor and (where kept) float64 ``[L2 norm,
  L1 norm, max |x|]`` of all of it. :meth:`Compact.check` compares a computed tensor with either form;
- derived: standard normals the official run drew from a seeded CPU generator; the metadata keeps the seed,
  how many uniforms precede them and the shape, and ``key#sample`` the stored values at the probe positions
  so that a regenerated tensor is checked before use.

The official checkpoints are rebuilt from the one stored weight set: the fixtures' EMA copies are the
weights plus (EMA1) or minus (EMA2) 0.001 on every trainable tensor, bit for bit.
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

COMPACT_DIR = Path(__file__).resolve().parent / "fixtures" / "official"
FULL_FIXTURE_NAMES = ("official_jit_tiny", "official_jit_train", "official_vco_tiny", "official_vco_train",
                      "official_vco_arch")
# V-Co's architecture alternatives (Table 1) as the official fixtures name them, and their two output rows
ARCH_VARIANTS = ("token_concat", "channel_concat", "direct_addition", "shared_jit", "mmdit_joint_qkv")
ARCH_OUTPUTS = ("x_pred_cond_row1", "f_pred_cond_row1", "x_pred_drop_row0", "f_pred_drop_row0")
EMA_OFFSETS = {"model_ema1": 0.001, "model_ema2": -0.001}


def probe_positions(numel: int, limit: int) -> torch.Tensor:
    """``limit`` evenly spread flat positions of a tensor of ``numel`` values (every position when it is small)."""
    if numel <= limit:
        return torch.arange(numel)
    return torch.arange(limit, dtype=torch.int64) * numel // limit


def tensor_stats(t: torch.Tensor) -> torch.Tensor:
    """float64 ``[L2 norm, L1 norm, max |x|]`` of every value of ``t``."""
    t = t.detach().double().flatten()
    return torch.stack([t.norm(), t.abs().sum(), t.abs().max()])


def seeded_normals(seed: int, skip: int, shape) -> torch.Tensor:
    """Standard normals ``torch.randn(shape)`` from a CPU generator seeded ``seed`` after ``skip`` uniforms."""
    g = torch.Generator().manual_seed(seed)
    if skip:
        torch.rand(skip, generator=g)
    return torch.randn(tuple(shape), generator=g)


class Compact:
    """One compact fixture file: ``fx[key]`` gives a tensor, ``fx.check(actual, key)`` compares with it."""

    def __init__(self, name: str, folder: Path = COMPACT_DIR):
        path = folder / f"{name}.safetensors"
        self.name, self.path = name, path
        self.tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            self.meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        self._derived: dict[str, torch.Tensor] = {}

    def keys(self, prefix: str = "") -> list[str]:
        """Stored keys (without the ``#`` form suffix) under ``prefix``, in sorted order."""
        names = {k.split("#")[0] for k in self.tensors} | set(self.meta.get("derived", {}))
        return sorted(k for k in names if k.startswith(prefix))

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self.tensors:
            return self.tensors[key]
        if f"{key}#u8" in self.tensors:
            return self.tensors[f"{key}#u8"].float() / 255 * 2 - 1
        if key in self.meta.get("derived", {}):
            return self._regenerated(key)
        raise KeyError(f"{self.name}: {key!r} is stored only as a probe; compare with check()")

    def _regenerated(self, key: str) -> torch.Tensor:
        if key not in self._derived:
            recipe = self.meta["derived"][key]
            value = seeded_normals(recipe["seed"], recipe["skip"], recipe["shape"])
            stored = self.tensors[f"{key}#sample"]
            got = value.flatten()[probe_positions(value.numel(), stored.numel())]
            # the official values came from torch's CPU generator; an ulp of libm difference is harmless
            if not torch.allclose(got, stored, rtol=1e-6, atol=1e-6):
                raise AssertionError(f"{self.name}: torch {torch.__version__} draws other normals for {key!r} (seed "
                                     f"{recipe['seed']}) than the official run did: store the tensor itself (drop it "
                                     "from DERIVED in scripts/compact_official_fixtures.py and rebuild the copy)")
            self._derived[key] = value
        return self._derived[key]

    def check(self, actual: torch.Tensor, key: str, *, rtol: float, atol: float = 0.0, scaled_atol: float = 0.0):
        """Assert ``actual`` matches the stored ``key`` (full tensor or probe): ``|a - e| <= atol + rtol |e|``
        elementwise, ``atol`` raised by ``scaled_atol`` x max |e| (gradients: relative to the tensor's scale)."""
        actual = actual.detach().float().cpu()
        if key in self.tensors or f"{key}#u8" in self.tensors or key in self.meta.get("derived", {}):
            expected = self[key]
            assert tuple(actual.shape) == tuple(expected.shape), (key, tuple(actual.shape), tuple(expected.shape))
            tol = atol + scaled_atol * expected.abs().max().item()
            torch.testing.assert_close(actual, expected.float(), rtol=rtol, atol=tol, msg=lambda m: f"{key}: {m}")
            return
        sample, stats = self.tensors[f"{key}#sample"], self.tensors.get(f"{key}#stats")
        assert list(actual.shape) == self.tensors[f"{key}#shape"].tolist(), (key, tuple(actual.shape))
        got = actual.flatten()[probe_positions(actual.numel(), sample.numel())]
        tol = atol + scaled_atol * (sample.abs().max() if stats is None else stats[2]).item()
        torch.testing.assert_close(got, sample, rtol=rtol, atol=tol, msg=lambda m: f"{key} (probe): {m}")
        if stats is None:       # the optimizer fixture: values away from the probe were not computed
            return
        # norms over every value: a systematic error away from the probed positions still shows
        n = actual.numel()
        slack = torch.tensor([tol * n ** 0.5, tol * n, tol], dtype=torch.float64)
        got, want = tensor_stats(actual), stats
        bad = (got - want).abs() > slack + max(rtol, 1e-6) * want.abs()
        assert not bad.any(), f"{key} (L2, L1, max |x| of all values): {got.tolist()} != {want.tolist()}"

    def fill(self, target: torch.Tensor, key: str) -> None:
        """Write the stored values of ``key`` into ``target``: all of it, or a probe's positions only."""
        if f"{key}#sample" in self.tensors and key not in self.meta.get("derived", {}):
            sample = self.tensors[f"{key}#sample"]
            flat = target.view(-1)
            flat[probe_positions(flat.numel(), sample.numel())] = sample.to(flat.dtype)
        else:
            target.copy_(self[key])

    # ----------------------------------------------------------------- official checkpoints
    def weights(self) -> dict[str, torch.Tensor]:
        """The official ``model`` state dict (``net.*`` keys, plus the V-Co Denoiser's image buffers)."""
        return {k: self.tensors[f"model/{k}"] for k in self.meta["weight_order"]}

    def checkpoint(self) -> dict:
        """The official ``checkpoint-last.pth`` content, EMA copies rebuilt from the weights."""
        model = self.weights()
        frozen = set(self.meta["frozen"])
        ckpt = {"model": model}
        for name, offset in EMA_OFFSETS.items():
            ckpt[name] = {k: v if k in frozen else v + offset for k, v in model.items()}
        ckpt["optimizer"] = _with_tuples(self.meta["optimizer"])
        ckpt["epoch"] = self.meta["epoch"]
        ckpt["args"] = None
        return {k: ckpt[k] for k in self.meta["checkpoint_order"]}

    def write_checkpoint(self, path: Path) -> Path:
        """Write :meth:`checkpoint` as an official ``.pth`` file (``torch.save``) and return its path."""
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.checkpoint(), path)
        return path


    def arch_checkpoint(self, variant: str) -> dict:
        """``vco_arch``: the official ``checkpoint-last.pth`` content of one variant; the ``feat_rope_concat*``
        buffers the official net carries but never reads are zeros of their shape (a converter drops them)."""
        info = self.meta["variants"][variant]
        model = {}
        for k in info["weight_order"]:
            if k in info["rope_buffers"]:
                model[k] = torch.zeros(info["rope_buffers"][k])
            else:
                model[k] = self.tensors["net.pos_embed" if k == "net.pos_embed" else f"{variant}/model/{k}"]
        ckpt = {"model": model, "optimizer": {}, "epoch": info["epoch"], "args": None}
        return {k: ckpt[k] for k in info["checkpoint_order"]}


def _with_tuples(optimizer: dict) -> dict:
    """An optimizer state dict read from JSON: AdamW's ``betas`` back to a tuple, parameter ids as ints."""
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else dict(g) for g in optimizer.get("param_groups", [])]
    return {**optimizer, **({"param_groups": groups} if "param_groups" in optimizer else {})}


@cache
def compact(name: str) -> Compact:
    """The compact fixture ``name`` (``jit_tiny``, ``jit_train``, ``vco_tiny``, ``vco_train``, ``vco_arch``), loaded once."""
    return Compact(name)


def dinov2_tiny_path() -> Path:
    """The 1-layer DINOv2 (Hugging Face layout, fp16) that the official V-Co training step used as its encoders."""
    return COMPACT_DIR / "dinov2_with_registers_tiny.safetensors"
