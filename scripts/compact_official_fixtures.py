#!/usr/bin/env python
"""Rebuild the compact copy of the official parity fixtures (``tests/fixtures/official/``) from the full folders.

    python scripts/compact_official_fixtures.py FULL_FIXTURES_DIR [--out tests/fixtures/official]

FULL_FIXTURES_DIR holds ``official_jit_tiny``, ``official_jit_train``, ``official_vco_tiny``,
``official_vco_train`` and ``official_vco_arch`` as the official code wrote them. The output is
deterministic (same input, same bytes);
``tests/test_official_fixtures.py`` rebuilds it and compares with the committed copy when the full folders are
present. What is kept and what is cut: ``tests/fixtures/official/README.md``. Every cut is checked here
against the full data before anything is written (derived tensors regenerate bit for bit, repeated rows
are equal), so a copy that could not stand in for the full folders is never produced.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.official_fixtures import (  # noqa: E402
    ARCH_OUTPUTS,
    ARCH_VARIANTS,
    EMA_OFFSETS,
    FULL_FIXTURE_NAMES,
    probe_positions,
    seeded_normals,
    tensor_stats,
)

# values kept per probed tensor (tensors this small or smaller are kept whole)
GRAD_PROBE_JIT, GRAD_PROBE_VCO = 2048, 1024
OUTPUT_PROBE = 16384          # per row and stream of a network output
OPTIM_PROBE = 512             # per tensor of the AdamW + EMA fixture (inputs and results at the same positions)
# standard normals the official runs drew from seeded CPU generators (seed, uniforms drawn before, shape);
# found by regenerating them, checked below against the stored values
DERIVED = {
    "vco_tiny": {"io/z": (1, 196608, (2, 3, 256, 256)),        # rows 1-2 of randn(4, 3, 256, 256), seed 1
                 "io/zs": (1, 983040, (2, 256, 768))},         # rows 1-2 of the randn(4, 256, 768) after it
    "vco_train": {"noise": (7, 789512, (4, 3, 256, 256)),
                  "noise_f": (7, 1575944, (4, 256, 768))},
}
DERIVED_SAMPLE = 4096
ARCH_PROBE = 4096             # per output row and stream of an architecture variant (five variants, 25 MB budget)
DINOV2_FILES = ("dinov2_with_registers_tiny.safetensors", "dinov2_config.json")


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def probe(out: dict, key: str, t: torch.Tensor, limit: int, norms: bool = True) -> None:
    """``t`` whole when it has at most ``limit`` values, else its probe (values at spread positions, and the
    norms of all values unless ``norms`` is False)."""
    t = t.detach().contiguous()
    if t.numel() <= limit:
        out[key] = t.clone()
        return
    out[f"{key}#sample"] = t.flatten()[probe_positions(t.numel(), limit)].clone()
    if norms:
        out[f"{key}#stats"] = tensor_stats(t)
    out[f"{key}#shape"] = torch.tensor(list(t.shape), dtype=torch.int64)


def derive(out: dict, meta: dict, name: str, key: str, actual: torch.Tensor) -> None:
    seed, skip, shape = DERIVED[name][key]
    regenerated = seeded_normals(seed, skip, shape)
    if not torch.equal(regenerated, actual):
        sys.exit(f"{name}: {key} is not torch.randn{shape} after {skip} uniforms of seed {seed} here; "
                 "store it instead of deriving it")
    out[f"{key}#sample"] = actual.flatten()[probe_positions(actual.numel(), DERIVED_SAMPLE)].clone()
    meta.setdefault("derived", {})[key] = {"seed": seed, "skip": skip, "shape": list(shape)}


def weights(out: dict, meta: dict, ckpt: dict) -> None:
    """The ``model`` weights once; the EMA copies must be exactly model +/- 0.001 on the trainable tensors."""
    model = ckpt["model"]
    frozen = [k for k, v in model.items() if torch.equal(ckpt["model_ema1"][k], v)]
    for name, offset in EMA_OFFSETS.items():
        for k, v in model.items():
            want = v if k in frozen else v + offset
            if list(ckpt[name]) != list(model) or not torch.equal(ckpt[name][k], want):
                sys.exit(f"{name}[{k}] is not the model weight {offset:+}: the EMA copies cannot be derived")
    for k, v in model.items():
        out[f"model/{k}"] = v.contiguous().clone()
    meta.update(weight_order=list(model), frozen=frozen, epoch=ckpt["epoch"], checkpoint_order=list(ckpt),
                optimizer=ckpt["optimizer"])
    if ckpt["args"] is not None:
        sys.exit("the fixture checkpoint holds args; the compact copy rebuilds args=None")


def scalars_and_small(out: dict, src: dict, prefix: str, keys) -> None:
    for k in keys:
        out[f"{prefix}{k}"] = torch.as_tensor(src[f"{prefix}{k}"]).contiguous().clone()


# ----------------------------------------------------------------------------------- the four fixtures
def jit_tiny(full: Path) -> tuple[dict, dict]:
    folder = full / "official_jit_tiny"
    out, meta = {}, {"config": json.loads((folder / "config.json").read_text())}
    weights(out, meta, load(folder / "checkpoint-last.pth"))
    io = load(folder / "io.pt")
    for k in ("z", "t", "y", "x_pred", "x_pred_ema1"):   # 150 KB: kept whole
        out[f"io/{k}"] = io[k].contiguous().clone()
    return out, meta


def jit_train(full: Path) -> tuple[dict, dict]:
    folder = full / "official_jit_train"
    io, opt = load(folder / "train_io.pt"), load(folder / "optim.pt")
    out, meta = {}, {"info": io["info"]}
    for k in ("x", "labels", "t_normal", "t", "noise"):
        out[k] = io[k].contiguous().clone()
    for case in ("nodrop", "drop"):
        p = f"{case}/"
        scalars_and_small(out, io, p, ("drop_uniforms", "labels_dropped", "loss"))
        probe(out, p + "x_pred", io[p + "x_pred"], OUTPUT_PROBE)
        for name, g in io[p + "grads"].items():
            probe(out, f"{p}grads/{name}", g, GRAD_PROBE_JIT)
        meta[f"{case}/draw_order"] = io[p + "draw_order"]
        meta[f"{case}/grad_names"] = list(io[p + "grads"])
    named = opt["named_tensors"]
    meta.update(decay_names=opt["decay_names"], no_decay_names=opt["no_decay_names"], named_tensors=named,
                settings=opt["settings"])
    # AdamW and the EMAs act value by value: the results at some positions need the gradients at those only
    for step, grads in opt["G"].items():
        for name in named:
            if name in grads:
                probe(out, f"G/{step}/{name}", grads[name], OPTIM_PROBE, norms=False)
    for case in ("recipe", "wd"):
        out[f"{case}/lr"] = opt[f"{case}/lr"].clone()
        meta[f"{case}/base_lr"] = opt[f"{case}/base_lr"]
        for after in ("after1", "after3"):
            for which in ("model", "ema1", "ema2"):
                for name in named:
                    key = f"{case}/{after}/{which}/{name}"
                    probe(out, key, opt[key], OPTIM_PROBE, norms=False)
    return out, meta


def vco_tiny(full: Path) -> tuple[dict, dict]:
    folder = full / "official_vco_tiny"
    out, meta = {}, {"config": json.loads((folder / "config.json").read_text())}
    weights(out, meta, load(folder / "checkpoint-last.pth"))
    io = load(folder / "io.pt")
    for k in ("t", "y", "drop", "y_drop"):
        out[f"io/{k}"] = io[k].contiguous().clone()
    derive(out, meta, "vco_tiny", "io/z", io["z"])
    derive(out, meta, "vco_tiny", "io/zs", io["zs"])
    # the undropped row of the drop call is the conditional call's row: kept once
    for pixel, feature in (("x_pred", "f_pred"), ("x_pred_drop", "f_pred_drop")):
        rows = (0, 1) if pixel == "x_pred" else (0,)
        for row in rows:
            probe(out, f"io/{pixel}/{row}", io[pixel][row], OUTPUT_PROBE)
            probe(out, f"io/{feature}/{row}", io[feature][row], OUTPUT_PROBE)
    for a, b in (("x_pred_drop", "x_pred"), ("f_pred_drop", "f_pred")):
        if not torch.equal(io[a][1], io[b][1]):
            sys.exit(f"vco_tiny: {a} row 1 differs from {b} row 1; keep both rows")
    meta["call"] = io["call"]
    return out, meta


def vco_train(full: Path) -> tuple[dict, dict]:
    folder = full / "official_vco_train"
    io = load(folder / "train_io.pt")
    out, meta = {}, {"param_groups": json.loads((folder / "param_groups.json").read_text()),
                     "n_trainable_params": io["n_trainable_params"],
                     "args": json.loads((full / "official_vco_tiny" / "config.json").read_text())}
    x = io["x"]
    k = ((x + 1) / 2 * 255).round()
    if not torch.equal(k / 255 * 2 - 1, x) or k.min() < 0 or k.max() > 255:
        sys.exit("vco_train: x is not k / 255 * 2 - 1 for integer k in [0, 255]; store it as float32")
    out["x#u8"] = k.to(torch.uint8).contiguous()
    for key in ("labels", "t_normal", "t", "hybrid_cls_x"):
        out[key] = io[key].contiguous().clone()
    derive(out, meta, "vco_train", "noise", io["noise"])
    derive(out, meta, "vco_train", "noise_f", io["noise_f"])
    probe(out, "feat_target", io["feat_target"], OUTPUT_PROBE)
    stat = load(folder / "stat.pt")
    if stat.get("mean") is not None:
        sys.exit("vco_train: stat.pt has a mean; the compact copy keeps only var")
    out["stat/var"] = stat["var"].contiguous().clone()
    terms = ("drop_uniforms", "drop", "labels_dropped", "total_loss", "loss_pixels", "loss_dinov2", "loss_drifting_v3",
             "drifting_v3_gate_mean", "drifting_v3_attract_norm", "drifting_v3_repel_norm", "drifting_v3_drift_norm")
    for case in ("drop_row0", "drop_rows013"):
        p = f"{case}/"
        scalars_and_small(out, io, p, terms)
        for name, g in io[p + "grads"].items():
            probe(out, f"{p}grads/{name}", g, GRAD_PROBE_VCO)
        meta[f"{case}/draw_order"] = io[p + "draw_order"]
        meta[f"{case}/grad_names"] = list(io[p + "grads"])
    return out, meta


def vco_arch(full: Path) -> tuple[dict, dict]:
    """The architecture variants of V-Co's Table 1: each one's weights (float32; the frozen sin-cos table once,
    the unused ``feat_rope_concat*`` RoPE buffers as shapes only) and probes of its two output rows."""
    root = full / "official_vco_arch"
    out, meta = {}, {"variants": {}}
    for variant in ARCH_VARIANTS:
        folder = root / variant
        ckpt = load(folder / "checkpoint-last.pth")
        if ckpt["args"] is not None or set(ckpt) != {"model", "optimizer", "epoch", "args"}:
            sys.exit(f"vco_arch/{variant}: expected a checkpoint with model, optimizer, epoch and args=None only")
        model = ckpt["model"]
        buffers = {k: list(v.shape) for k, v in model.items() if k.startswith("net.feat_rope_concat")}
        for k, v in model.items():
            if k in buffers:
                continue
            if k == "net.pos_embed":
                if "net.pos_embed" in out and not torch.equal(out["net.pos_embed"], v):
                    sys.exit(f"vco_arch/{variant}: its sin-cos table differs from the other variants'; store each")
                out["net.pos_embed"] = v.contiguous().clone()
                continue
            out[f"{variant}/model/{k}"] = v.contiguous().clone()
        io = load(folder / "io.pt")
        for key in ARCH_OUTPUTS:
            probe(out, f"{variant}/io/{key}", io[key][0], ARCH_PROBE)
        meta["variants"][variant] = {"config": json.loads((folder / "config.json").read_text()),
                                     "weight_order": list(model), "rope_buffers": buffers, "epoch": ckpt["epoch"],
                                     "checkpoint_order": list(ckpt), "call": io["call"], "info": io["info"]}
    return out, meta


BUILDERS = {"jit_tiny": jit_tiny, "jit_train": jit_train, "vco_tiny": vco_tiny, "vco_train": vco_train,
            "vco_arch": vco_arch}


def build(full: Path, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, builder in BUILDERS.items():
        tensors, meta = builder(full)
        path = out_dir / f"{name}.safetensors"
        save_file(tensors, str(path), metadata={"meta": json.dumps(meta, sort_keys=True)})
        written.append(path)
    for fname in DINOV2_FILES:   # the encoder weights verbatim (already fp16)
        shutil.copyfile(full / "official_vco_train" / fname, out_dir / fname)
        written.append(out_dir / fname)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("full", type=Path, help="folder holding the official_* fixture folders")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "official")
    args = parser.parse_args(argv)
    missing = [n for n in FULL_FIXTURE_NAMES if not (args.full / n).is_dir()]
    if missing:
        parser.error(f"{args.full} lacks {', '.join(missing)}: pass the folder that holds the full fixtures")
    torch.set_num_threads(1)
    written = build(args.full, args.out)
    total = sum(p.stat().st_size for p in written)
    for p in written:
        print(f"{p.stat().st_size / 1e6:8.3f} MB  {p.name}")
    print(f"{total / 1e6:8.3f} MB  in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
