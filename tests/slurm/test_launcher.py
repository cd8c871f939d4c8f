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
from slurm.watch import checkpoint_step, format_status, run_status, slurm_job_info
from tests.fault_tools import SHIPPED_PLUGINS

pytestmark = pytest.mark.timeout(300)

# the smallest real run: preset "test" (digits, JiT-T/4) on one CPU
TINY = ("train.attention=exact", "sample.steps=2", "data.num_workers=0", "train.device=cpu")
CPU_JOB = {"cpus_per_task": 1, "time": 10}   # --mem-per-task: the default from the estimate
JOB_ENV = {"OMP_NUM_THREADS": "1"}


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(poll_s)


def build(overrides=(), preset="test", plugins=()):
    from jit_core.cli import build_config

    def _build(folder):
        return build_config(preset, None, tuple(plugins), tuple(TINY) + tuple(overrides), folder)
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
    ckpt = latest_checkpoint(run_dir)
    return {name: load_file(ckpt / f"{name}.safetensors") for name in ("model", "ema1", "aux")
            if name != "aux" or (ckpt / "aux.safetensors").is_file()}


PREEMPT_STEPS = 40
PREEMPT_OVERRIDES = [f"train.max_steps={PREEMPT_STEPS}", "train.ckpt_every=8", "train.log_every=1"]


@pytest.fixture(scope="module", params=list(SHIPPED_PLUGINS))
def preempted(request, slurm_cluster, tmp_path_factory):
    """A run with one shipped plugin (tests.fault_tools.SHIPPED_PLUGINS: none, V-Co, REPA) preempted (SIGTERM then
    USR2, ``job._interrupt()``) after its first checkpoint, requeued and finished, and the same run trained here
    uninterrupted: ``(run_dir, straight_dir, job)``."""
    import torch

    from jit_core.runs.checkpoint import latest_checkpoint
    from jit_core.training import train

    from .conftest import scancel_recorded
    plugins, extra = SHIPPED_PLUGINS[request.param]
    config = build(PREEMPT_OVERRIDES + list(extra), plugins=plugins)
    tmp = tmp_path_factory.mktemp(f"preempted-{request.param}")
    run_dir = tmp / "run"
    try:
        job = submit(plan_runs(config, run_dir), cpu_options(), run_dir, progress=False).jobs[0]
        wait_for(lambda: latest_checkpoint(run_dir, verify_hash=False) is not None, 150, "the first checkpoint")
        assert checkpoint_step(run_dir) < PREEMPT_STEPS, "the run ended before it could be preempted: lengthen it"
        job._interrupt()   # SIGTERM then USR2, as a preemption

        threads = torch.get_num_threads()
        torch.set_num_threads(1)   # as in the job (OMP_NUM_THREADS=1)
        try:   # the uninterrupted reference, in this process, while the job requeues
            straight = train(config(tmp / "straight"), tmp / "straight", progress=False)
        finally:
            torch.set_num_threads(threads)
        assert straight.step == PREEMPT_STEPS
        result = job.result()   # our own job's result, in a test: the CLI never unpickles results
        assert result["status"] == "finished" and result["step"] == PREEMPT_STEPS
        yield run_dir, tmp / "straight", job
    finally:
        scancel_recorded(run_dir)


@pytest.mark.slurm
def test_preempted_job_requeues_and_resumes_bit_identical(preempted):
    """_interrupt() after the first checkpoint: the job requeues, resumes and ends with the same weights
    (model, ema1, a plugin's own modules: bit-identical) and losses as an uninterrupted run of the same config."""
    import torch
    run_dir, straight, job = preempted
    starts = [e for e in read_events(run_dir) if e["event"] == "start"]
    assert len(starts) == 2 and 0 < starts[1]["step"] < PREEMPT_STEPS, starts   # requeued once, resumed mid-run
    wait_for(lambda: slurm_job_info(job.job_id)["State"] == "COMPLETED", 60, "sacct COMPLETED")
    status = run_status(run_dir)
    assert status["requeues"] == 1 and status["step"] == PREEMPT_STEPS and status["state"] == "COMPLETED", status
    assert status["elapsed_s"] > int(slurm_job_info(job.job_id)["ElapsedRaw"]), status   # over both attempts
    ours, theirs = _weights(run_dir), _weights(straight)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name].keys() == theirs[name].keys()
        for key in ours[name]:
            assert torch.equal(ours[name][key], theirs[name][key]), f"{name}.{key} differs from the uninterrupted run"
    assert _losses(run_dir) == _losses(straight)


def _losses(run_dir: Path) -> list[dict]:
    """Every loss term of every logged step (the requeued attempt's rows after its checkpoint)."""
    import json
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k == "step" or k.startswith("loss")} for row in rows]


@pytest.mark.slurm
def test_metrics_one_line_per_step_after_usr2_requeue(preempted):
    """The requeued attempt resumes from the last checkpoint and trains the steps after it again: metrics.jsonl
    must still hold one line per step, as the uninterrupted run's does."""
    import json
    run_dir, straight, _ = preempted
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line)["step"] for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert reference == list(range(1, PREEMPT_STEPS + 1))
    assert steps == reference, f"{len(steps) - len(set(steps))} steps logged twice"


@pytest.mark.slurm
def test_cancel_ends_running_job(slurm_cluster, run_dir):
    """`jit slurm cancel RUN` on a training job: the trainer checkpoints on SIGTERM, the job ends
    CANCELLED and is not requeued; `jit slurm status` shows the checkpoint's step (where a resume starts),
    not the last logged step, and the job's CPU time and memory from sacct."""
    from click.testing import CliRunner

    from jit_core.cli import _add_optional_commands, cli

    runs = plan_runs(build(["train.max_steps=100000", "train.ckpt_every=100000", "train.log_every=7"]), run_dir)
    job = submit(runs, cpu_options(), run_dir, progress=False).jobs[0]
    wait_for(lambda: (run_dir / "metrics.jsonl").exists(), 150, f"job {job.job_id} to train")
    time.sleep(6)   # a sample of the job's memory (JobAcctGatherFrequency=task=5)
    _add_optional_commands()
    res = CliRunner().invoke(cli, ["slurm", "cancel", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert f"{job.job_id}: cancelled" in res.output
    wait_for(lambda: slurm_job_info(job.job_id)["State"] == "CANCELLED", 60, "sacct CANCELLED")

    def ends():
        return [e for e in read_events(run_dir) if e["event"] == "end"]
    wait_for(lambda: ends(), 20, "the trainer to stop")
    assert ends()[-1]["status"] == "interrupted", ends()            # the trainer stopped on SIGTERM...
    stopped = ends()[-1]["step"]
    assert checkpoint_step(run_dir) == stopped                       # ...and wrote a checkpoint
    time.sleep(3)
    status = run_status(run_dir)
    assert status["state"] == "CANCELLED" and status["requeues"] == 0, status   # not requeued
    assert status["step"] == stopped and status["logged_step"] == stopped // 7 * 7, status
    wait_for(lambda: (run_status(run_dir)["max_rss"] or 0) > 100 * 2 ** 20, 60,
             "sacct's figures of the training step (written when it has ended, KillWait after the cancel)")
    status = run_status(run_dir)
    assert status["cpu_s"] > 1 and status["elapsed_s"] > 0, status
    res = CliRunner().invoke(cli, ["slurm", "status", str(run_dir)])
    assert f"step {stopped}/100000 (newest checkpoint: a resume starts here)" in res.output, res.output
    assert "max rss/task" in res.output and "cpu 00:" in res.output, res.output
    res = CliRunner().invoke(cli, ["slurm", "cancel", str(run_dir)])
    assert "already ended (CANCELLED)" in res.output


@pytest.mark.slurm
def test_max_requeues_failure_writes_end_event(slurm_cluster, run_dir):
    """A job out of requeues (--max-requeues 0, a time-limit USR2) ends FAILED with an `end` event whose
    message says that resubmitting resumes; --wait reports that message (from events.jsonl)."""
    from slurm.outcome import wait_for_end

    runs = plan_runs(build(["train.max_steps=100000", "train.ckpt_every=5", "train.log_every=5"]), run_dir)
    job = submit(runs, cpu_options(max_requeues=0), run_dir, progress=False).jobs[0]
    wait_for(lambda: checkpoint_step(run_dir) is not None, 150, "the first checkpoint")
    job._interrupt(timeout=True)   # USR2 only: a time limit (with --time 10 every USR2 counts as one)
    with pytest.raises(LaunchError, match="resubmit the same command to resume") as info:
        wait_for_end(job.job_id, "slurm", run_dir)
    assert "--max-requeues 0" in str(info.value)
    end = [e for e in read_events(run_dir) if e["event"] == "end"][-1]
    assert end["status"] == "failed" and end["reason"] == "max_requeues" and end["job_id"] == job.job_id, end
    assert "resubmit the same command to resume" in end["error"]
    assert slurm_job_info(job.job_id)["State"] == "FAILED"
    assert run_status(run_dir)["error"] == end["error"]


@pytest.mark.slurm
def test_pending_job_shows_reason(slurm_cluster, run_dir):
    runs = plan_runs(build(["train.max_steps=2"]), run_dir)
    job = submit(runs, cpu_options(sbatch={"begin": "now+600"}), run_dir, progress=False).jobs[0]
    wait_for(lambda: slurm_job_info(job.job_id)["State"] == "PENDING", 30, "sacct PENDING")
    # the scheduler names the reason on its next cycle (squeue says None until then; longer on a loaded machine)
    wait_for(lambda: run_status(run_dir)["pending_reason"] == "BeginTime", 60, "the pending reason")
    status = run_status(run_dir)
    assert status["state"] == "PENDING" and status["pending_reason"] == "BeginTime", status
    assert f"job {job.job_id}: PENDING (BeginTime)" in format_status(status)


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
    train(build(["train.max_steps=1"])(folder), folder, progress=False)
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


def test_capacity_from_sinfo_lines():
    """What the cluster has, from `sinfo -N -o '%N|%P|%c|%m|%G|%f'` lines (GRES and features parsed)."""
    from slurm.capacity import check_capacity, parse_sinfo
    nodes = parse_sinfo("g1|gpu*|64|512000|gpu:a100:4(S:0-1),gpu:h100:4|a100,ib\n"
                        "g2|gpu*|64|512000|gpu:8|h100\nc1|cpu|16|64000|(null)|(null)\n")
    assert [(n.name, n.partition, n.default, n.gpus, sorted(n.features)) for n in nodes] == [
        ("g1", "gpu", True, 8, ["a100", "ib"]), ("g2", "gpu", True, 8, ["h100"]), ("c1", "cpu", False, 0, [])]
    check_capacity(resolve_options({}, {"nodes": 2, "gpus_per_node": 8, "mem_per_task": 60}), nodes)
    with pytest.raises(LaunchError, match=r"asks for 2 nodes with 8 CPUs, 480 GB, 8 GPUs and features h100 each "
                                          r".* partition gpu \(the default\) has 2 nodes, 1 of them big enough"):
        check_capacity(resolve_options({}, {"nodes": 2, "gpus_per_node": 8, "mem_per_task": 60,
                                            "constraint": "h100"}), nodes)
    with pytest.raises(LaunchError, match=r"partition cpu has 1 node, 0 of them big enough \(c1: 16 CPUs, 62.5 GB, "
                                          r"no GPUs\)"):
        check_capacity(resolve_options({}, {"partition": "cpu", "gpus_per_node": 1, "mem_per_task": 8}), nodes)
    check_capacity(resolve_options({}, {"partition": "nope", "nodes": 5}), nodes)   # left to sbatch's message
