"""Submitting and watching (slurm/submit.py, slurm/job.py, slurm/watch.py) against the real local SLURM cluster:
DDP over 2 tasks, preemption with requeue and exact resume, cancel. Plus cluster-free unit checks of option handling.

Start the cluster with `scripts/slurm-cluster.sh up`; without it the cluster tests skip (or fail under
JIT_REQUIRE_SLURM=1).
"""
from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from slurm.job import TrainJob
from slurm.options import ClusterOptions, LaunchError, parse_time, resolve_options
from slurm.records import read_events, read_jobs
from slurm.runs import check_run_dir, plan_runs
from slurm.submit import check_shared_storage, submit
from slurm.watch import checkpoint_step, run_status, slurm_job_info

pytestmark = pytest.mark.timeout(300)

# the smallest real run: preset "test" (digits, JiT-T/4) on one CPU
TINY = ("train.attention=exact", "sample.steps=2", "data.num_workers=0", "train.device=cpu")
CPU_JOB = {"cpus_per_task": 1, "mem_per_task": 1, "time": 10}
JOB_ENV = {"OMP_NUM_THREADS": "1"}


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(poll_s)


def build(overrides=(), preset="test"):
    from jit_core.cli import build_config

    def _build(extra, folder):
        return build_config(preset, None, (), tuple(TINY) + tuple(overrides) + tuple(extra), folder)
    return _build


def cpu_options(**given) -> ClusterOptions:
    return resolve_options({"env": JOB_ENV}, {**CPU_JOB, **given})


# ---------------------------------------------------------------------------------------------- cluster
@pytest.mark.slurm
def test_two_tasks_ddp_params_identical(slurm_cluster, run_dir):
    """2 CPU tasks (gloo): after several steps both ranks hold the same parameters."""
    runs = plan_runs(build(["train.max_steps=4", "train.ckpt_every=100"]), run_dir)
    sub = submit(runs, cpu_options(tasks_per_node=2), run_dir, param_hash=True, progress=False)
    results = sub.jobs[0].results()
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world_size"] == 2 and r["step"] == 4 and r["status"] == "finished" for r in results)
    assert results[0]["param_hash"] == results[1]["param_hash"]
    saved = read_jobs(run_dir)[-1]
    assert saved["tasks"] == 2 and saved["job_id"] == sub.jobs[0].job_id


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    from jit_core.runs.checkpoint import latest_checkpoint
    return {name: load_file(latest_checkpoint(run_dir) / f"{name}.safetensors") for name in ("model", "ema1")}


@pytest.mark.slurm
def test_preempted_job_requeues_and_resumes_bit_identical(slurm_cluster, run_dir, tmp_path):
    """_interrupt() after the first checkpoint: the job requeues, resumes and ends with the same weights
    (model, ema1: bit-identical) as an uninterrupted run of the same config."""
    import torch

    from jit_core.runs.checkpoint import latest_checkpoint
    from jit_core.training import train

    steps = 40
    overrides = [f"train.max_steps={steps}", "train.ckpt_every=4", "train.log_every=4"]
    runs = plan_runs(build(overrides), run_dir)
    job = submit(runs, cpu_options(), run_dir, progress=False).jobs[0]
    wait_for(lambda: latest_checkpoint(run_dir, verify_hash=False) is not None, 150, "the first checkpoint")
    assert checkpoint_step(run_dir) < steps, "the run ended before it could be preempted: lengthen it"
    job._interrupt()   # SIGTERM then USR2, as a preemption

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as in the job (OMP_NUM_THREADS=1)
    try:   # the uninterrupted reference, in this process, while the job requeues
        straight = train(build(overrides)((), tmp_path / "straight"), tmp_path / "straight", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert straight.step == steps

    result = job.result()
    assert result["status"] == "finished" and result["step"] == steps
    starts = [e for e in read_events(run_dir) if e["event"] == "start"]
    assert len(starts) == 2 and 0 < starts[1]["step"] < steps, starts   # requeued once, resumed mid-run
    wait_for(lambda: slurm_job_info(job.job_id)["State"] == "COMPLETED", 60, "sacct COMPLETED")
    status = run_status(run_dir)
    assert status["requeues"] == 1 and status["step"] == steps and status["state"] == "COMPLETED", status
    ours, theirs = _weights(run_dir), _weights(tmp_path / "straight")
    for name in ours:
        assert ours[name].keys() == theirs[name].keys()
        for key in ours[name]:
            assert torch.equal(ours[name][key], theirs[name][key]), f"{name}.{key} differs from the uninterrupted run"


@pytest.mark.slurm
def test_cancel_ends_running_job(slurm_cluster, run_dir):
    """`jit slurm cancel RUN` on a training job: the trainer checkpoints on SIGTERM, the job ends
    CANCELLED and is not requeued."""
    from click.testing import CliRunner

    from jit_core.cli import _add_optional_commands, cli

    runs = plan_runs(build(["train.max_steps=100000", "train.ckpt_every=100000", "train.log_every=1"]), run_dir)
    job = submit(runs, cpu_options(), run_dir, progress=False).jobs[0]
    wait_for(lambda: (run_dir / "metrics.jsonl").exists(), 150, f"job {job.job_id} to train")
    _add_optional_commands()
    res = CliRunner().invoke(cli, ["slurm", "cancel", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert f"{job.job_id}: cancelled" in res.output
    wait_for(lambda: slurm_job_info(job.job_id)["State"] == "CANCELLED", 60, "sacct CANCELLED")

    def ends():
        return [e for e in read_events(run_dir) if e["event"] == "end"]
    wait_for(lambda: ends(), 20, "the trainer to stop")
    assert ends()[-1]["status"] == "interrupted", ends()            # the trainer stopped on SIGTERM...
    assert checkpoint_step(run_dir) == ends()[-1]["step"]         # ...and wrote a checkpoint
    time.sleep(3)
    status = run_status(run_dir)
    assert status["state"] == "CANCELLED" and status["requeues"] == 0, status   # not requeued
    res = CliRunner().invoke(cli, ["slurm", "cancel", str(run_dir)])
    assert "already ended (CANCELLED)" in res.output


# ---------------------------------------------------------------------------------------------- no cluster
def test_parse_time():
    assert parse_time(90) == 90
    assert parse_time("72:00:00") == 72 * 60
    assert parse_time("1-12") == 36 * 60
    assert parse_time("2-00:30:00") == 48 * 60 + 30
    assert parse_time("5:30") == 6   # MM:SS, rounded up
    with pytest.raises(LaunchError, match="HH:MM:SS"):
        parse_time("soon")


def test_options_cli_overrides_profile():
    prof = {"partition": "gpu", "gpus_per_node": 8, "cpus_per_task": 12, "sbatch": {"exclusive": ""},
            "env": {"A": "1"}}
    opts = resolve_options(prof, {"partition": "debug", "gpus_per_node": None, "sbatch": {"mail-type": "END"}})
    assert opts.partition == "debug" and opts.gpus_per_node == 8 and opts.ntasks_per_node == 8
    assert opts.sbatch == {"exclusive": "", "mail-type": "END"} and opts.env == {"A": "1"}
    assert resolve_options({}, {"gpus_per_node": 0, "tasks_per_node": 3}).ntasks_per_node == 3
    with pytest.raises(LaunchError, match="one task per GPU"):
        resolve_options({}, {"gpus_per_node": 4, "tasks_per_node": 2})
    with pytest.raises(LaunchError, match="--executor local runs on this machine"):
        resolve_options({}, {"executor": "local", "nodes": 2})


def test_shared_storage_heuristic(tmp_path):
    multi = resolve_options({}, {"nodes": 2})
    with pytest.raises(LaunchError, match="not on shared storage"):
        check_shared_storage(tmp_path / "run", multi)
    check_shared_storage(tmp_path / "run", resolve_options({}, {"nodes": 1}))
    check_shared_storage(tmp_path / "run", resolve_options({}, {"nodes": 2, "allow_local_run_dir": True}))


def test_run_dir_holding_another_run_is_refused_at_submit(tmp_path):
    from jit_core.training import train
    folder = tmp_path / "run"
    train(build(["train.max_steps=1"])((), folder), folder, progress=False)
    same = plan_runs(build(["train.max_steps=3"]), folder)       # longer: allowed
    check_run_dir(same[0])
    other = plan_runs(build(["train.max_steps=3", "optim.lr=0.5"]), folder)
    with pytest.raises(LaunchError, match="already holds a different run.*optim.lr"):
        check_run_dir(other[0])


def test_train_job_pickles_by_a_stable_import_path(tmp_path):
    """submitit pickles the job by reference: a fresh interpreter elsewhere (as on a node) loads it from
    ``slurm.job``, and a pickle of the old path ``slurm.launcher.TrainJob`` (queued before the split) too."""
    import pickle
    import sys

    import cloudpickle
    job = TrainJob({"seed": 1}, str(tmp_path / "run"), param_hash=True, progress=False)
    old = pickle.dumps(job, protocol=0).replace(b"slurm.job\n", b"slurm.launcher\n")
    assert b"slurm.launcher\n" in old
    for data in (cloudpickle.dumps(job), old):
        code = ("import pickle, sys; j = pickle.load(sys.stdin.buffer); "
                "print(type(j).__module__, type(j).__name__, j.config, j.run_dir, j.param_hash, j.progress)")
        out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, cwd="/", timeout=60,
                             check=True).stdout.decode().split()
        assert out == ["slurm.job", "TrainJob", "{'seed':", "1}", str(tmp_path / "run"), "True", "False"]
