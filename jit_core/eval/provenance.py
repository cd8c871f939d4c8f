"""What an evaluation records next to its numbers (docs/official-code.md#evaluation, 5): checkpoint and weights hash, model,
training, sampler, guidance incl. the unconditional form, samples, selection and library versions; and
the settings a saved grid point must match to be reused."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import torch

from jit_core.diffusion import guidance_active, guidance_scales


def _weights_hash(checkpoint: Path, ema: str) -> tuple[str, str | None]:
    from jit_core.eval.fid import file_sha256
    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        return str(checkpoint), file_sha256(checkpoint)
    f = checkpoint / f"{ema}.safetensors"
    manifest = checkpoint / "manifest.json"
    if manifest.is_file():  # load_run verified these hashes while loading
        entry = json.loads(manifest.read_text()).get("files", {}).get(f.name)
        if entry and entry.get("sha256"):
            return str(f), entry["sha256"]
    return str(f), file_sha256(f) if f.is_file() else None


def _last_logged(run_dir: Path) -> dict:
    path = Path(run_dir) / "metrics.jsonl"
    last: dict = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                continue
            last = row if isinstance(row, dict) and row else last   # untrusted lines: only objects count
    return last


def _trainer_world_size(checkpoint: Path) -> int | None:
    """Ranks that trained the checkpoint (``trainer.pt``, memory-mapped: the optimizer state is not read)."""
    path = Path(checkpoint) / "trainer.pt"
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("world_size"))
    except Exception:  # noqa: BLE001 -- provenance only: an official import or an older checkpoint lacks it
        return None


def _velocity_evaluations(method: str, steps: int, interval) -> tuple[int, int]:
    """(velocity evaluations, how many of them guided) for the sampler grid t_i = i / steps."""
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float32).tolist()
    times = []
    for i in range(steps):
        times.append(grid[i])
        if method == "heun" and i < steps - 1:
            times.append(grid[i + 1])
    return len(times), sum(bool(guidance_active(t, tuple(interval))) for t in times)


def _unconditional_form(run) -> dict:
    from jit_core.diffusion import unconditional_form
    from jit_core.hookcalls import call_each
    drop = torch.ones(1, dtype=torch.bool)
    streams = run.model.streams
    impls = [s.plugin for s in streams if s.null_branch(drop, streams, False) is not None]   # streams' own, then hooks
    impls += [name for name, _ in call_each(run.plugins.hook.jit_null_branch, drop=drop, streams=streams,
                                            config=run.config, training=False, generator=None)]
    u = unconditional_form(run.plugins.hook, torch.zeros(1, dtype=torch.int64), drop, run.model.streams, run.config,
                           run.model.cfg.num_classes)
    names = [s.name for s in run.model.streams]
    blocked = None
    if u.blocked is not None:
        blocked = [f"{names[q]} queries -/-> {names[k]} keys" for q in range(len(names)) for k in range(len(names))
                   if bool(u.blocked[0, q, k])]
    nulls = sorted(u.null_inputs)
    return {"null_label": int(u.labels[0]), "attention_blocked": blocked, "null_inputs": nulls or None,
            "hooks_in_call_order": impls,
            "description": "null class label" + (" + attention mask (" + "; ".join(blocked) + ")" if blocked else "")
            + (" + null input (" + ", ".join(nulls) + ")" if nulls else "")}


def _versions() -> dict:
    import importlib.metadata as md
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "numpy": np.__version__}
    for dist_name in ("timm", "torch-fidelity", "jit-vco", "scipy"):
        try:
            out[dist_name] = md.version(dist_name)
        except md.PackageNotFoundError:
            out[dist_name] = None
    return out


def provenance(run, *, cfg: float, steps: int, method: str, interval, num_images: int, seed: int, batch_size: int,
               world_size: int, device, save: str, sample_path: str | None, swept: bool,
               ema_swept: bool = False) -> dict:
    """Everything the protocol (docs/official-code.md#evaluation, 5) asks to record next to a number
    (metric-side items are added later)."""
    c = run.config
    ema_decay = {"ema1": c.optim.ema_decays[0], "ema2": c.optim.ema_decays[1]}.get(run.ema)
    weights_file, weights_sha = _weights_hash(run.checkpoint, run.ema)
    evals, guided = _velocity_evaluations(method, steps, interval)
    scales = guidance_scales(run.model.streams, cfg)
    device = torch.device(device)
    autocast = device.type == "cuda" and c.train.precision == "bf16"
    last = _last_logged(run.run_dir)
    mc, world = run.model.cfg, _trainer_world_size(run.checkpoint)
    return {
        "run_dir": str(Path(run.run_dir).resolve()),
        "checkpoint": {"path": str(run.checkpoint), "step": run.step, "epoch": last.get("epoch"),
                       "weights": run.ema, "ema_decay": ema_decay, "weights_file": weights_file,
                       "weights_sha256": weights_sha},
        "model": {"name": c.model, "trainable_params": run.model.num_params(), "image_size": mc.image_size,
                  "channels": mc.in_channels, "num_classes": mc.num_classes,
                  "streams": [s.name for s in run.model.streams],
                  "plugins": {n: i.version for n, i in run.plugins.infos.items()}},
        "training": {"batch_size_per_rank": c.optim.batch_size, "world_size": world,
                     "global_batch": c.optim.batch_size * world if world else None, "lr_last_logged": last.get("lr"),
                     "wall_time_s": last.get("time"), "dataset": c.data.name},
        "sampler": {"method": method, "steps": steps, "grid_points": steps + 1, "velocity_evaluations": evals,
                    "final_step": "Heun + final Euler" if method == "heun" else "Euler",
                    "t_eps": c.diffusion.t_eps, "t_eps_rule": "velocity divides by max(1 - t, t_eps)",
                    "precision": "bf16 autocast" if autocast else "fp32",
                    "attention": run.model.attention_path, "device": str(device), "batch_size": batch_size},
        "guidance": {"cfg": cfg, "scale_per_stream": scales, "interval": list(interval),
                     "interval_ends": "open: guided iff lo < t < hi (lo == 0: t < hi)",
                     "guided_evaluations": guided if any(w != 1.0 for w in scales.values()) else 0,
                     "all_streams_unguided": all(w == 1.0 for w in scales.values()),
                     "unconditional": _unconditional_form(run)},
        "samples": {"num_images": num_images, "label_scheme": "class-major: label(n) = floor(n * C / N), N/C per class",
                    "seed": seed, "noise": "image n: torch.Generator seeded seed * 1000003 + n (initial_noise)",
                    "quantisation": "round(clip(255 (x + 1) / 2, 0, 255)), uint8", "format": save,
                    "path": sample_path, "world_size": world_size},
        "selection": {"cfg_chosen_on_these_samples": swept, "ema_chosen_on_these_samples": ema_swept},
        "versions": _versions(),
    }


def point_settings(run, name: str, kind: str, bootstrap: int, save: str, ref_stats, ref_dir, prc: bool) -> dict:
    """What must match for an existing result JSON to stand for this grid point (the name encodes step,
    weights, images, sampler, cfg, seed and interval)."""
    from jit_core.eval.fid import file_sha256
    return {"name": name, "metric_kind": kind, "bootstrap": bootstrap, "save": save,
            "weights_sha256": _weights_hash(run.checkpoint, run.ema)[1],
            "ref_stats_sha256": file_sha256(ref_stats) if ref_stats else None,
            "ref_dir": str(Path(ref_dir).resolve()) if ref_dir else None, "prc": bool(prc and ref_dir)}
