"""The submitted job: :class:`TrainJob`, a submitit ``Checkpointable`` that trains one run.

Every task (one per GPU) turns submitit's job environment into the torchrun variables (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and runs :class:`jit_core.training.Trainer` on the run
folder. Preemption and time limits are submitit's USR2 signal: ``checkpoint()`` just resubmits the same
job, and the requeued job resumes from the run folder's last complete checkpoint (the trainer does that
by itself). SIGTERM and SIGUSR1 make the trainer finish its step and write a checkpoint.

submitit pickles the job by reference: the nodes unpickle ``slurm.job.TrainJob`` from the same
installation, so keep the class here under this name.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import submitit
from submitit.core.utils import UncompletedJobError
from submitit.helpers import Checkpointable, DelayedSubmission

from .records import append_event, now

log = logging.getLogger("jit.slurm")

INTERRUPT_GRACE_S = 120   # after SIGTERM stopped training: how long a job waits to be requeued or killed


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def distributed_env() -> tuple[dict[str, str], Any]:
    """torchrun-style variables for this task from submitit's job environment (one process: rank 0 of 1)."""
    try:
        job_env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (e.g. called directly)
        return {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}, None
    world = job_env.num_tasks
    env = {"RANK": str(job_env.global_rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(job_env.local_rank),
           "LOCAL_WORLD_SIZE": str(max(1, world // max(1, job_env.num_nodes)))}
    if world > 1:
        dist_env = submitit.helpers.TorchDistributedEnvironment()
        addr = dist_env.master_addr
        if job_env.cluster in ("local", "debug") or job_env.num_nodes == 1 and addr == socket.gethostname():
            addr = "127.0.0.1"
        env.update(MASTER_ADDR=str(addr), MASTER_PORT=str(dist_env.master_port))
    return env, job_env


def _step(trainer) -> int | None:
    """The step a failed run had reached (None if the trainer was not built)."""
    return getattr(trainer, "step", None)


def _checkpoint_note(run_dir: str) -> str:
    """`` (step N)`` of the run's newest checkpoint, for messages ("" if there is none)."""
    from jit_core.runs.checkpoint import latest_checkpoint
    try:
        path = latest_checkpoint(run_dir, verify_hash=False)
    except Exception:  # noqa: BLE001 - only words a message; the trainer checks checkpoints itself
        return ""
    return f" ({path.name})" if path is not None else ""


def _param_hash(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class TrainJob(Checkpointable):
    """One run's training, as a submitit job (every task of the job runs it).

    ``config``: ``Config.to_dict()``; ``run_dir``: the run folder. ``param_hash=True`` adds a SHA-256 of
    the model's parameters to each task's result (the ranks of a DDP run must agree). ``max_requeues``
    (submitit's ``max_num_timeout``) only words the message when the job stops requeueing.

    Rank 0 writes a ``start`` event when training starts and an ``end`` event however the training ends
    (finished, interrupted, failed: with the error), so `jit slurm status|--wait` read outcomes from
    ``events.jsonl`` and never from submitit's result pickles.

    ``evaluate``: keyword arguments of :func:`jit_core.eval.evaluate.evaluate_run`; a run that finished
    training is then evaluated by every task of the job (``jit slurm study``), and rank 0 records it
    as a finished study element (``study-element.json``).
    """

    def __init__(self, config: dict, run_dir: str, param_hash: bool = False, progress: bool = True,
                 max_requeues: int | None = None, evaluate: dict | None = None):
        self.config = config
        self.run_dir = str(run_dir)
        self.param_hash = param_hash
        self.progress = progress
        self.max_requeues = max_requeues
        self.evaluate = evaluate

    def __call__(self) -> dict:
        env, job_env = distributed_env()
        cluster = job_env.cluster if job_env is not None else "none"
        if "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = os.environ.get("SLURM_CPUS_PER_TASK", "1")
        env.setdefault("TQDM_MININTERVAL", os.environ.get("TQDM_MININTERVAL", "30"))
        if cluster != "debug":
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        with _environ(env):
            return self._run(env, job_env, cluster)

    def _run(self, env: dict, job_env, cluster: str) -> dict:
        import torch
        import torch.distributed as tdist

        from jit_core.config import Config
        from jit_core.training import Trainer
        if "OMP_NUM_THREADS" in env and cluster != "debug":   # torch was imported before it was set
            torch.set_num_threads(max(1, int(env["OMP_NUM_THREADS"])))
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        job_id = job_env.job_id if job_env is not None else None
        trainer = None

        def end(record: dict) -> None:
            if rank == 0:
                append_event(self.run_dir, {"event": "end", "job_id": job_id, "time": now(), **record})
        t0 = time.perf_counter()
        try:
            try:
                trainer = Trainer(Config.from_dict(self.config), self.run_dir,
                                  handle_signals=(signal.SIGTERM, signal.SIGUSR1), progress=self.progress)
                if rank == 0:
                    append_event(self.run_dir, {"event": "start", "job_id": job_id, "executor": cluster,
                                                "time": now(), "host": socket.gethostname(), "world_size": world,
                                                "step": trainer.step})
                result = trainer.fit()
                out = {"run_dir": str(result.run_dir), "step": result.step, "status": result.status,
                       "losses": dict(result.losses), "rank": rank, "world_size": world, "job_id": job_id,
                       "checkpoint": str(result.checkpoint) if result.checkpoint else None}
                if self.param_hash:
                    out["param_hash"] = _param_hash(trainer.model)
                evaluate = getattr(self, "evaluate", None)   # absent from pickles of older versions
                if result.status == "finished" and evaluate:
                    out["evaluation"] = self._evaluate(evaluate, rank, time.perf_counter() - t0)
                end({"status": result.status, "step": result.step, "losses": dict(result.losses)})
            finally:
                if tdist.is_available() and tdist.is_initialized():
                    tdist.destroy_process_group()
            if result.status == "interrupted" and cluster == "slurm":
                self._linger_after_interrupt()
        except UncompletedJobError as exc:   # raised by submitit's USR2 handler: no more requeues allowed
            limit = getattr(self, "max_requeues", None)   # absent from pickles of older versions
            allowed = f" (--max-requeues {limit})" if limit is not None else ""
            message = (f"the job reached its time limit more often than allowed{allowed} and was not requeued "
                       f"({exc}); the run's last checkpoint{_checkpoint_note(self.run_dir)} is kept: resubmit the "
                       "same command to resume it")
            end({"status": "failed", "step": _step(trainer), "error": message, "reason": "max_requeues"})
            raise UncompletedJobError(message) from exc
        except Exception as exc:
            if cluster == "slurm" and _requeue_again(exc):
                self._linger_after_interrupt()    # requeued: SLURM ends this attempt, the next one resumes
            end({"status": "failed", "step": _step(trainer), "error": f"{type(exc).__name__}: {exc}"})
            raise
        return out

    def _evaluate(self, options: dict, rank: int, train_s: float) -> str:
        """Evaluate the finished run with ``options`` (keyword arguments of ``evaluate_run``, distributed over
        the job's tasks); rank 0 records the study element."""
        from jit_core.durable import stored_path
        from jit_core.eval.evaluate import evaluate_run
        from jit_core.study.local import write_done
        t0 = time.perf_counter()
        result = evaluate_run(self.run_dir, progress=False, **options)
        if rank == 0:
            write_done(self.run_dir, {"train_s": round(train_s, 1), "eval_s": round(time.perf_counter() - t0, 1),
                                      "num_images": options.get("num_images"),
                                      "result": stored_path(result["json"], self.run_dir)})   # relative: it may move
        return result["json"]

    @staticmethod
    def _linger_after_interrupt() -> None:
        """SIGTERM/SIGUSR1 stopped training and a checkpoint was written. On SLURM that is a cancel (SIGKILL
        follows after KillWait), a preemption or a time limit (submitit's USR2 follows, or came first and
        requeued the job). Returning now would write a result and end the job as if the run were done,
        so wait for SLURM to end or requeue it; if nothing comes, return the "interrupted" result.
        """
        grace = float(os.environ.get("JIT_SLURM_INTERRUPT_GRACE_S", INTERRUPT_GRACE_S))
        log.warning("training stopped on a signal; waiting up to %.0f s for SLURM to requeue or end the job", grace)
        time.sleep(grace)
        log.warning("the job was neither requeued nor ended: returning the interrupted run "
                    "(resubmit the same command to resume it)")

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Cheap (no collectives): resubmit the same job; it resumes from the last complete checkpoint."""
        return DelayedSubmission(TrainJob(self.config, self.run_dir, self.param_hash, self.progress,
                                          getattr(self, "max_requeues", None),   # absent from older pickles
                                          getattr(self, "evaluate", None)))


def _requeue_again(exc: BaseException) -> bool:
    """submitit's USR2 handler runs ``scontrol requeue`` from inside the job; when the preemption's SIGTERM reaches
    that child before it returns, the handler raises in whatever code was running (often a plugin hook, whose error
    wrapper then chains it). Find that cut-short requeue in ``exc``'s chain and send it once more (SLURM refuses it
    when the first one got through): True when one was found, so that the job waits for SLURM to requeue it rather
    than reporting a failure; its last complete checkpoint resumes it exactly."""
    seen: BaseException | None = exc
    while seen is not None:
        if (isinstance(seen, subprocess.CalledProcessError) and isinstance(seen.cmd, (list, tuple))
                and list(seen.cmd[:2]) == ["scontrol", "requeue"] and seen.returncode < 0):
            log.warning("scontrol requeue was cut short by a signal (%s): requeueing again", seen)
            try:
                subprocess.run(list(seen.cmd), timeout=60, check=False)
            except (OSError, subprocess.SubprocessError) as again:
                log.warning("the second requeue did not run: %s", again)
            return True
        seen = seen.__cause__ or seen.__context__
    return False
