"""Which device a run trains on, said out loud: no silent CPU fallback, and the CUDA switches of ``train.*``.

``train.device=auto`` picks the GPU when torch can use one. Two ways it could quietly pick the CPU instead
are refused at start-up (and by ``jit train --dry-run``), each with its fix in one line:

- a GPU is installed (``/dev/nvidia0`` or ``nvidia-smi``) but torch cannot use it: a driver older than the
  CUDA build of torch, or a CPU-only build of torch;
- a GPU-sized model (B/16 and up: at least ``GPU_SIZED_PARAMS`` parameters) would train on the CPU: say
  ``train.device=cpu`` to mean it.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional

import torch

from jit_core.config import ConfigError

log = logging.getLogger("jit")
GPU_SIZED_PARAMS = 100_000_000       # JiT-B/16 has 131 M; the CPU presets 0.1-1.4 M


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU, whatever torch thinks (device node or driver tool present)."""
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def check_device_choice(device_name: str, device: torch.device, model_params: int,
                        gpu_here: Optional[bool] = None) -> None:
    """Refuse the silent CPU fallbacks of ``train.device=auto`` (module docstring). ``device``: what
    ``device_name`` resolved to; ``gpu_here``: the GPU probe's answer (None: :func:`gpu_present`)."""
    if device_name != "auto" or device.type != "cpu":
        return
    if gpu_here is None:
        gpu_here = gpu_present()
    if gpu_here:
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(f"a GPU is installed but torch {torch.__version__} ({build}) cannot use it "
                          "(torch.cuda.is_available() is False: an NVIDIA driver older than that CUDA, or the "
                          "CPU-only wheel): install the torch build matching the driver (nvidia-smi shows its "
                          "CUDA version), or set train.device=cpu to train on the CPU")
    if model_params >= GPU_SIZED_PARAMS:
        raise ConfigError(f"train.device=auto found no GPU, and this model ({model_params / 1e6:.0f} M parameters) "
                          "is sized for GPUs: run on a GPU machine, or set train.device=cpu to train it on the CPU")


def describe_device(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB)`` / ``cpu (8 threads)``: for the start-up log line."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{device} ({p.name}, {p.total_memory / 2 ** 30:.1f} GiB)"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def cuda_switches(train_config, device: torch.device) -> None:
    """``train.tf32`` (TF32 matmuls and convolutions for fp32 ops) and ``train.cudnn_benchmark`` on CUDA; the CPU's
    numerics are untouched."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = train_config.tf32
    torch.backends.cudnn.allow_tf32 = train_config.tf32
    torch.backends.cudnn.benchmark = train_config.cudnn_benchmark
