"""Helpers for the training, reliability and bad-input tests (real processes, real files).

- a tiny RGB image-folder dataset (80 images, 4 classes): with ``optim.batch_size=8`` an epoch is
  10 steps (the reference run has 20), so resumes land mid-epoch or on an epoch boundary cheaply, and a ``jit train`` subprocess
  does not pay for importing scikit-learn (the digits dataset);
- :func:`reference_run`: the uninterrupted reference run, trained once per pytest process
  (in-process, one thread) and shared by every test that compares final weights with it;
- :func:`jit_cmd` / :func:`subprocess_env`: how the tests start the real ``jit`` console script;
- :class:`NaNPlugin`: an ``extra_plugins`` object whose ``jit_loss_terms`` returns a NaN term at chosen
  steps (it counts its own calls: the StepState carries no step number);
- ``python -m tests.fault_tools ddp ...``: a DDP worker (torchrun-style environment) that trains with
  :class:`jit_core.training.Trainer` and all-gathers a hash of every rank's parameters at the end.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

import torch

from jit_core.hookspecs import hookimpl

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = ("model", "ema1", "ema2")
FOLDER_CLASSES, FOLDER_PER_CLASS = 4, 20       # 80 images
BATCH = 8                                      # -> 10 steps per epoch on one process
STEPS_PER_EPOCH = FOLDER_CLASSES * FOLDER_PER_CLASS // BATCH
REF_STEPS = 20                                 # crosses the epoch boundary at step 10


# ----------------------------------------------------------------------------------- session folder
@cache
def session_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="jit-fault-tests-"))
    atexit.register(shutil.rmtree, root, True)
    return root


def make_image_folder(root: Path, classes: int = FOLDER_CLASSES, per_class: int = FOLDER_PER_CLASS,
                      corrupt: int = 0, seed: int = 0) -> Path:
    """``root/<class>/<i>.png`` smooth random RGB images (36x40 px, so the ADM crop has work to do);
    the first ``corrupt`` files of each class are garbage bytes with a .png name."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / f"{i:03d}.png"
            if i < corrupt:
                path.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(64))   # valid magic, broken body
                continue
            small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((40, 36), Image.BILINEAR)
            img.save(path)
    return root


@cache
def shared_folder() -> Path:
    """The image folder every folder-based run uses (same path, same bytes)."""
    return make_image_folder(session_root() / "images")


def folder_overrides(steps: int = REF_STEPS, **extra) -> list[str]:
    """``KEY=VALUE`` overrides of the ``test`` preset for the folder runs."""
    keys = {"data.name": "folder", "data.path": str(shared_folder()), "data.image_size": 32,
            "optim.batch_size": BATCH, "train.max_steps": steps, "train.ckpt_every": 2, "train.log_every": 2,
            "sample.steps": 2, "sample.batch_size": 40}
    keys.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in keys.items()]


def folder_config(steps: int = REF_STEPS, **extra):
    from jit_core.config import load_config
    return load_config("test", None, folder_overrides(steps, **extra))


# ----------------------------------------------------------------------------------- in-process runs
@contextlib.contextmanager
def single_thread():
    """Train with one intra-op thread, like the subprocesses (OMP_NUM_THREADS=1): same numerics."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_in_process(config, run_dir: Path, **kwargs):
    from jit_core.training import train
    with single_thread():
        return train(config, run_dir, progress=False, **kwargs)


@cache
def reference_run(steps: int = REF_STEPS) -> Path:
    """An uninterrupted folder run of ``steps`` steps (trained once per process). Do not modify it."""
    run = session_root() / f"reference-{steps}"
    result = train_in_process(folder_config(steps), run)
    assert result.status == "finished" and result.step == steps, result
    return run


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------------- checkpoints
def step_dir(run: Path, step: int) -> Path:
    return Path(run) / "checkpoints" / f"step-{step:08d}"


def load_weights(ckpt_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file
    return {w: load_file(str(Path(ckpt_dir) / f"{w}.safetensors")) for w in WEIGHTS}


def compare_weights(a: Path, b: Path) -> dict[str, bool]:
    """{weights name: bit-identical (same keys, torch.equal on every tensor)} of two checkpoint dirs."""
    wa, wb = load_weights(a), load_weights(b)
    return {w: wa[w].keys() == wb[w].keys() and all(torch.equal(wa[w][k], wb[w][k]) for k in wa[w])
            for w in WEIGHTS}


def max_abs_diff(a: Path, b: Path) -> float:
    wa, wb = load_weights(a), load_weights(b)
    return max(float((wa[w][k] - wb[w][k]).abs().max()) for w in WEIGHTS for k in wa[w])


def latest_step(run: Path) -> int | None:
    """The step named by ``checkpoints/latest`` (None while there is none); never raises."""
    try:
        text = (Path(run) / "checkpoints" / "latest").read_text().strip()
        return int(text.split("-")[1])
    except (OSError, ValueError, IndexError):
        return None


def read_metrics(run: Path, tolerant: bool = False) -> list[dict]:
    """The rows of ``metrics.jsonl``; ``tolerant``: skip a line being written right now (while polling a live run)."""
    path = Path(run) / "metrics.jsonl"
    rows = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if not tolerant:
                raise
    return rows


def tree_snapshot(path: Path) -> dict[str, tuple[int, int, str]]:
    """{relative path: (size, mtime_ns, sha256)} of every file under ``path``: proves nothing was touched."""
    out = {}
    for p in sorted(Path(path).rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(path))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


# ----------------------------------------------------------------------------------- subprocesses
def subprocess_env(**extra) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               JIT_DISABLE_PLUGIN_AUTOLOAD="1",   # the core runs need no plugin: skip importing timm
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def jit_cmd(*args: str) -> list[str]:
    """The installed ``jit`` console script next to this interpreter (else ``python -m jit_core``)."""
    script = Path(sys.executable).with_name("jit")
    return ([str(script)] if script.exists() else [sys.executable, "-m", "jit_core"]) + list(args)


def wait_for(predicate, timeout: float, interval: float = 0.02, proc=None) -> bool:
    """Poll ``predicate`` until true (True), ``timeout`` passes or ``proc`` exits (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(predicate())
        time.sleep(interval)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------- fault plugins
class NaNPlugin:
    """``jit_loss_terms`` returns ``{"boom": nan}`` on the steps ``bad(step)`` says (1-based count of its own
    calls: one call per training step; the StepState carries no step number), else ``{"boom": 0}``."""

    def __init__(self, bad):
        self.__name__ = "nan_injector"
        self.bad = bad if callable(bad) else (lambda s, steps=frozenset(bad): s in steps)
        self.calls = 0

    @hookimpl
    def jit_loss_terms(self, step):
        self.calls += 1
        value = float("nan") if self.bad(self.calls) else 0.0
        return {"boom": torch.tensor(value, device=step.images.device)}


class SignalPlugin:
    """``jit_loss_terms`` sends ``sig`` to this very process during training step ``at`` (adds no loss term):
    a real signal, delivered to the trainer's handler in the middle of a step."""

    def __init__(self, sig, at: int):
        self.__name__ = "signal_sender"
        self.sig, self.at, self.calls = sig, at, 0

    @hookimpl
    def jit_loss_terms(self, step):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.sig)
        return {}


class DiskFull:
    """Replacement for ``open`` in :mod:`jit_core.durable` (checkpoint writes): files written inside a checkpoint directory
    whose name contains ``match`` get ``budget`` bytes in all, then ``write`` writes what fits and raises
    ENOSPC, like a disk that fills up in the middle of a checkpoint."""

    def __init__(self, match: str, budget: int):
        self.match, self.budget, self.written, self.raised = match, budget, 0, 0

    def __call__(self, file, mode="r", *args, **kwargs):
        import builtins
        f = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 -- returned to the caller's `with`
        if any(c in mode for c in "wxa") and self.match in str(file):
            return _FullFile(f, self)
        return f


class _FullFile:
    def __init__(self, f, disk: DiskFull):
        self.f, self.disk = f, disk

    def write(self, data):
        import errno
        view = memoryview(data).cast("B")
        room = self.disk.budget - self.disk.written
        if view.nbytes > room:
            if room > 0:
                self.f.write(view[:room])
                self.disk.written += room
            self.disk.raised += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.disk.written += view.nbytes
        return self.f.write(view)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        return False


class Evil:
    """A pickle that runs code when loaded without weights_only (creates ``marker``)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


# ----------------------------------------------------------------------------------- DDP worker
def params_digest(named) -> str:
    """SHA-256 over (name, bytes) of every tensor, by name: equal digests mean bit-identical tensors."""
    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def launch_ddp(run_dir: Path, out_prefix: Path, overrides: list[str], world: int = 2, timeout: float = 300,
               installed_plugins: bool = False):
    """Start ``world`` ranks of :func:`ddp_main` with a torchrun-style environment (gloo on the CPU);
    ``installed_plugins``: the installed plugins visible (entry points), for runs that enable one.

    Returns ``(exit codes, output of each rank)``; ranks still running after ``timeout`` are killed (rc None).
    """
    import subprocess
    port = free_port()
    procs, logs = [], []
    for rank in range(world):
        env = subprocess_env(RANK=rank, WORLD_SIZE=world, LOCAL_RANK=rank, LOCAL_WORLD_SIZE=world,
                             MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                             **({"JIT_DISABLE_PLUGIN_AUTOLOAD": ""} if installed_plugins else {}))
        log = open(f"{out_prefix}.rank{rank}.log", "w+")  # noqa: SIM115 -- read back after the ranks exit
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.fault_tools", "ddp", str(run_dir), str(out_prefix),
                                       *overrides], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    end, codes = time.monotonic() + timeout, []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, end - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    return codes, outputs


def ddp_main(argv: list[str]) -> int:
    """``python -m tests.fault_tools ddp RUN_DIR OUT_PREFIX KEY=VALUE...`` (one rank; torchrun-style env)."""
    import torch.distributed as dist

    from jit_core.config import load_config
    from jit_core.training import Trainer
    run_dir, out_prefix, overrides = argv[0], argv[1], argv[2:]
    torch.set_num_threads(1)
    trainer = Trainer(load_config("test", None, overrides), run_dir, progress=False)
    result = trainer.fit()
    mine = {"model": params_digest(trainer.model.named_parameters()),
            "ema1": params_digest(trainer.emas[0].state_dict(trainer.model).items()),
            "ema2": params_digest(trainer.emas[1].state_dict(trainer.model).items())}
    gathered = [None] * trainer.dist.world_size
    dist.all_gather_object(gathered, mine)
    report = {"rank": trainer.dist.rank, "world_size": trainer.dist.world_size, "status": result.status,
              "step": result.step, "digests": gathered, "global_batch": trainer.global_batch,
              "base_lr": trainer.base_lr, "steps_per_epoch": trainer.steps_per_epoch}
    Path(f"{out_prefix}.rank{trainer.dist.rank}.json").write_text(json.dumps(report, default=repr))
    dist.barrier()
    dist.destroy_process_group()
    return 0


# ----------------------------------------------------------------------------------- shipped plugins
# Every plugin the project ships, as the exact-resume tests (local kill, SLURM requeue) enable it:
# name -> (plugins to enable, extra KEY=VALUE overrides). A new shipped plugin is one more entry.
SHIPPED_PLUGINS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "jit": ((), ()),
    "vco": (("vco",), ("vco.encoder=efficientnet_lite0", "vco.groups_per_step=2", "vco.calib_images=16")),
    "repa": (("repa",), ("repa.block=2",)),
}


def plugin_env(**extra) -> dict[str, str]:
    """:func:`subprocess_env` with the installed plugins visible (entry points), for runs that enable one."""
    return subprocess_env(JIT_DISABLE_PLUGIN_AUTOLOAD="", **extra)


class KillPlugin:
    """``jit_loss_terms`` SIGKILLs this very process during training step ``at`` (its own call count; adds no
    loss term): the process dies at once, as under ``kill -9``, with the checkpoints before ``at`` on disk."""

    def __init__(self, at: int):
        self.__name__ = "killer"
        self.at, self.calls = at, 0

    @hookimpl
    def jit_loss_terms(self, step):
        import signal
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
        return {}


def die_at_main(argv: list[str]) -> int:
    """``python -m tests.fault_tools die-at STEP RUN_DIR PRESET PLUGINS KEY=VALUE...`` (PLUGINS comma-separated,
    ``-`` for none): train that run and be killed (SIGKILL) during step STEP. The killer is an extra plugin,
    not part of the run's config, so ``jit train --resume RUN_DIR`` resumes the very run."""
    from jit_core.plugins.presets import build_config
    from jit_core.training import Trainer
    at, run_dir, preset, plugins, overrides = int(argv[0]), argv[1], argv[2], argv[3], argv[4:]
    plugins = () if plugins == "-" else tuple(plugins.split(","))
    torch.set_num_threads(1)
    config = build_config(preset, None, plugins, overrides, run_dir)
    Trainer(config, run_dir, extra_plugins=[KillPlugin(at)], progress=False).fit()
    return 1   # not reached: killed during step `at`


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "ddp":
        sys.exit(ddp_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "die-at":
        sys.exit(die_at_main(sys.argv[2:]))
    sys.exit("usage: python -m tests.fault_tools ddp RUN_DIR OUT_PREFIX KEY=VALUE... | "
             "die-at STEP RUN_DIR PRESET PLUGINS KEY=VALUE...")


def stop_after_step_3_then_resume(proc, log, run: Path, stop, resume_args=()) -> dict:
    """``stop(proc)`` once the run has logged 3 steps, wait for the exit and read ``log``; then finish the run
    with ``jit train --resume RUN`` in-process. Returns what the signal tests check."""
    import re

    from click.testing import CliRunner

    from jit_core import cli as jit_cli
    from jit_core.runs import checkpoint as ckpt
    reached = wait_for(lambda: len(read_metrics(run, tolerant=True)) >= 3, timeout=300, proc=proc)
    stop(proc)
    rc = proc.wait(timeout=300)
    log.seek(0)
    output = log.read()
    m = re.search(r"interrupted at step (\d+)", output)
    r = {"run": run, "reached": reached, "rc": rc, "output": output, "stopped_at": int(m[1]) if m else None,
         "checkpoints": ckpt.list_checkpoints(run)}
    with single_thread():
        r["resume"] = CliRunner().invoke(jit_cli.cli, ["train", "--resume", str(run), *resume_args])
    return r
