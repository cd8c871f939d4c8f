"""Run folders you can trust (#17): one trainer per folder (the lock), Ctrl-C, a kill between a checkpoint's
rename and the update of ``latest``, metrics.jsonl after a resume, ``--allow-change`` and ``--resume`` of a
folder without a checkpoint. Real processes and real files; the folder runs of :mod:`tests.fault_tools`."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import jit_core.cli as jit_cli
from jit_core.runs import checkpoint as ckpt
from jit_core.runs.lock import LOCK_NAME, RunLock, RunLockedError, read_holder
from jit_core.training import Trainer

from . import fault_tools as ft

N = ft.REF_STEPS


@pytest.fixture(scope="module")
def reference():
    return ft.reference_run()


def _steps(run) -> list[int]:
    return [m["step"] for m in ft.read_metrics(run)]


def _start(run: Path, log, *overrides: str, new_session: bool = False, **keys) -> subprocess.Popen:
    cmd = ft.jit_cmd("train", "--preset", "test", "--run-dir", str(run), *ft.folder_overrides(**keys), *overrides)
    return subprocess.Popen(cmd, env=ft.subprocess_env(), stdout=log, stderr=subprocess.STDOUT, cwd=run.parent,
                            start_new_session=new_session)


def _last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------- the lock
def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    first = RunLock(tmp_path / "run").acquire()
    holder = read_holder(tmp_path / "run")
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(RunLockedError) as err:
        RunLock(tmp_path / "run").acquire()          # another open file: flock refuses it, even in this process
    msg = str(err.value)
    assert f"pid {os.getpid()} on {socket.gethostname()}" in msg and "\n" not in msg, msg
    first.release()
    with RunLock(tmp_path / "run") as again:        # released: the next one gets it
        assert again.held
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""   # a released lock names nobody


def test_requeued_slurm_job_waits_for_its_previous_attempt(tmp_path, monkeypatch):
    """The holder is an earlier attempt of the same SLURM job: wait for it instead of refusing; a holder from
    another job is refused at once."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    old = RunLock(tmp_path).acquire()
    threading.Timer(1.0, old.release).start()
    start = time.monotonic()
    with RunLock(tmp_path) as new:
        waited = time.monotonic() - start
        assert new.held and read_holder(tmp_path)["slurm_job_id"] == "4242"
    assert 0.8 < waited < 10, waited
    other = RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    start = time.monotonic()
    with pytest.raises(RunLockedError, match="SLURM job 4242"):
        RunLock(tmp_path).acquire()
    assert time.monotonic() - start < 1
    other.release()


def test_second_trainer_is_refused_and_the_first_finishes(tmp_path):
    """A `jit train` subprocess trains; a second `jit train` of the same folder (in this process) is refused
    with one line naming the first one's PID and host, writes nothing, and the first finishes untouched."""
    run, steps = tmp_path / "run", 40
    with open(tmp_path / "a.log", "w+") as log:
        proc = _start(run, log, steps=steps, train__log_every=1, train__ckpt_every=10)
        assert ft.wait_for(lambda: len(ft.read_metrics(run, tolerant=True)) >= 1, timeout=300, proc=proc)
        config_before = (run / "config.json").stat().st_mtime_ns
        res = CliRunner().invoke(jit_cli.cli, ["train", "--preset", "test", "--run-dir", str(run),
                                               *ft.folder_overrides(steps, train__log_every=1, train__ckpt_every=10)])
        running = proc.poll() is None
        rc = proc.wait(timeout=600)
        log.seek(0)
        output = log.read()
    assert running, "the first trainer ended before the second one tried"
    assert res.exit_code == 1, res.output
    line = _last_line(res.output)
    assert line.startswith(f"Error: run folder {run} is in use by another trainer (pid {proc.pid} on "
                           f"{socket.gethostname()}"), res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert (run / "config.json").stat().st_mtime_ns == config_before
    assert rc == 0 and f"finished at step {steps}" in output, output[-3000:]
    assert _steps(run) == list(range(1, steps + 1))
    ckpt.verify_checkpoint(ft.step_dir(run, steps))


def test_lock_of_a_killed_trainer_does_not_block_the_next(tmp_path):
    """kill -9 leaves .lock naming the dead trainer; the kernel dropped its flock, so the next trainer runs. The
    kill came after steps were logged past the last checkpoint: the resumed run's metrics.jsonl still has one
    line per step."""
    run = tmp_path / "run"
    with open(tmp_path / "a.log", "w") as log:
        proc = _start(run, log, steps=N, train__log_every=1, train__ckpt_every=4)
        def past_a_checkpoint():
            rows, latest = ft.read_metrics(run, tolerant=True), ft.latest_step(run) or 0
            return latest >= 4 and len(rows) >= 6 and rows[-1]["step"] > latest
        ft.wait_for(past_a_checkpoint, timeout=300, proc=proc)
        assert proc.poll() is None, "the trainer ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert read_holder(run)["pid"] == proc.pid                 # the stale text stays...
    resumed_from = ft.latest_step(run)
    assert _steps(run)[-1] > resumed_from                     # ...and steps after the checkpoint were logged
    result = ft.train_in_process(ft.folder_config(N, train__log_every=1, train__ckpt_every=4), run)
    assert (result.status, result.step) == ("finished", N)
    assert _steps(run) == list(range(1, N + 1))


def test_folder_with_only_a_lock_file_is_a_fresh_run(tmp_path):
    """A trainer killed after taking the lock but before writing config.json leaves only .lock: not 'another
    program's files'."""
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text('{"pid": 1, "host": "gone"}\n')
    assert ft.train_in_process(ft.folder_config(2), run).status == "finished"


def test_ddp_ranks_refused_together_without_deadlock(tmp_path):
    """The folder is held (by this process): rank 0 is refused and rank 1 learns it; both exit within seconds."""
    run = tmp_path / "run"
    with RunLock(run):
        start = time.monotonic()
        codes, outputs = ft.launch_ddp(run, tmp_path / "ddp", ft.folder_overrides(4), timeout=240)
    assert all(c not in (0, None) for c in codes), (codes, [o[-1500:] for o in outputs])
    assert f"is in use by another trainer (pid {os.getpid()}" in outputs[0], outputs[0][-2000:]
    assert "rank 0 could not take it" in outputs[1], outputs[1][-2000:]
    assert time.monotonic() - start < 240
    assert not (run / "config.json").exists()


# ----------------------------------------------------------------------------------- Ctrl-C
@pytest.fixture(scope="module")
def sigint_run(reference, tmp_path_factory):
    """`jit train` (its own process group, a loader worker) gets Ctrl-C (SIGINT to the group, as a terminal
    sends it) after its 3rd step; then `jit train --resume RUN` (in-process) finishes it."""
    root = tmp_path_factory.mktemp("sigint")
    run = root / "run"
    with open(root / "jit.log", "w+") as log:
        proc = _start(run, log, new_session=True, steps=N, train__log_every=1, train__ckpt_every=1000,
                      data__num_workers=1)
        return ft.stop_after_step_3_then_resume(proc, log, run, lambda p: os.killpg(p.pid, signal.SIGINT),
                                                ["data.num_workers=0"])


def test_sigint_checkpoints_and_exits_130(sigint_run):
    r = sigint_run
    assert r["reached"], r["output"][-2000:]
    assert r["rc"] == 130, r["output"][-3000:]
    assert "received SIGINT: finishing the step, writing a checkpoint, exiting" in r["output"]
    assert "Traceback" not in r["output"] and "exited unexpectedly" not in r["output"]
    s = r["stopped_at"]
    assert s is not None and 3 <= s < N, r["output"][-2000:]
    assert r["checkpoints"] == [ft.step_dir(r["run"], s)]          # ckpt_every=1000: only the signal's
    assert r["resume"].exit_code == 0 and f"finished at step {N}" in r["resume"].output, r["resume"].output[-3000:]
    assert _steps(r["run"]) == list(range(1, N + 1))


def test_sigint_resume_is_bit_identical(reference, sigint_run):
    same = ft.compare_weights(ft.step_dir(reference, N), ft.step_dir(sigint_run["run"], N))
    assert same == {"model": True, "ema1": True, "ema2": True}


def test_second_ctrl_c_aborts_at_once(tmp_path):
    """Two Ctrl-C during step 3 (tests.ctrl_c_plugin): the second aborts in the middle of the step, with exit
    status 130 and one line; the checkpoint of step 2 is what a resume starts from."""
    run = tmp_path / "run"
    with open(tmp_path / "jit.log", "w+") as log:
        proc = _start(run, log, "--plugin", "tests.ctrl_c_plugin", steps=20, train__ckpt_every=2)
        rc = proc.wait(timeout=300)
        log.seek(0)
        output = log.read()
    assert rc == 130, output[-3000:]
    assert "received SIGINT: finishing the step, writing a checkpoint, exiting (Ctrl-C again to abort at once)" in output
    assert _last_line(output) == ("aborted: the step in progress is lost; the last complete checkpoint is kept "
                                  "(resume with jit train --resume RUN)"), output[-3000:]
    assert "Traceback" not in output and "interrupted at step" not in output
    assert ckpt.list_checkpoints(run) == [ft.step_dir(run, 2)] and ckpt.latest_checkpoint(run) == ft.step_dir(run, 2)


# ----------------------------------------------------------------------------------- newest checkpoint, metrics
def test_kill_between_rename_and_pointer_resumes_from_the_newer(reference, tmp_path):
    """`latest` still names step 10 although step 12 was renamed into place (a kill before the pointer update):
    the resume starts from 12, rolls metrics.jsonl back to 12 and ends bit-identical to the uninterrupted run."""
    run = tmp_path / "run"
    cfg = dict(train__keep_every=2, train__log_every=1)
    ft.train_in_process(ft.folder_config(14, **cfg), run)
    ckpt._remove_dir(ft.step_dir(run, 14))                              # killed after logging 13, 14 ...
    (run / "checkpoints" / "latest").write_text("step-00000010\n")      # ... and before `latest` named 12
    trainer = Trainer(ft.folder_config(N, **cfg), run, progress=False)
    assert trainer.step == 12 and trainer.last_checkpoint == ft.step_dir(run, 12)
    assert _steps(run) == list(range(1, 13))                            # rolled back on resume
    with ft.single_thread():
        assert trainer.fit().step == N
    assert _steps(run) == list(range(1, N + 1))
    same = ft.compare_weights(ft.step_dir(reference, N), ft.step_dir(run, N))
    assert same == {"model": True, "ema1": True, "ema2": True}


def _w(seed):
    g = torch.Generator().manual_seed(seed)
    sd = {"a.weight": torch.randn(4, 4, generator=g)}
    return {"model": sd, "ema1": sd, "ema2": sd}


def test_newer_checkpoint_of_another_line_is_not_taken(tmp_path):
    """Only checkpoints written after the one `latest` names, by the run that continued from it, are taken:
    a higher step left by a line of the run that was abandoned (resumed from an earlier checkpoint) is not."""
    for step in (10, 20, 30):
        ckpt.save_checkpoint(tmp_path, step, _w(step), {"step": step}, keep_last=10)
    root = tmp_path / "checkpoints"
    (root / "latest").write_text("step-00000010\n")
    assert ckpt.latest_checkpoint(tmp_path) == root / "step-00000030"     # 10 -> 20 -> 30, one line
    ckpt.save_checkpoint(tmp_path, 15, _w(15), {"step": 15}, keep_last=10)  # resumed from 10 (latest): a new line
    assert ckpt.latest_checkpoint(tmp_path) == root / "step-00000015"
    (root / "latest").write_text("step-00000010\n")
    assert ckpt.latest_checkpoint(tmp_path) == root / "step-00000015"     # 20 came from 10 too, but 15 is newer
    (root / "step-00000015" / "model.safetensors").write_bytes(b"x")       # ... and damaged: back to 10, which
    with pytest.warns(UserWarning, match="skipping checkpoint step-00000015"):   # `latest` names, not the old line
        assert ckpt.latest_checkpoint(tmp_path) == root / "step-00000010"


def test_metrics_roll_back_keeps_lines_up_to_the_step(tmp_path):
    from jit_core.training.metrics_log import roll_back
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "lo')   # cut by a kill
    assert roll_back(path, 5) == 3
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4, 5]
    before = path.stat().st_mtime_ns
    assert roll_back(path, 5) == 0 and path.stat().st_mtime_ns == before           # nothing to drop: untouched
    assert roll_back(tmp_path / "none.jsonl", 3) == 0


# ----------------------------------------------------------------------------------- --allow-change, --resume
@pytest.fixture()
def six_steps(tmp_path):
    run = tmp_path / "run"
    assert ft.train_in_process(ft.folder_config(6, train__log_every=1), run).step == 6
    return run


def _resume(run, *args):
    with ft.single_thread():
        return CliRunner().invoke(jit_cli.cli, ["train", "--resume", str(run), *args])


def test_allow_change_lets_a_resume_change_the_lr_and_records_it(six_steps):
    run = six_steps
    saved = (run / "config.json").read_text()
    refused = _resume(run, "train.max_steps=8", "optim.lr=0.0005")
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    line = _last_line(refused.output)
    assert "already holds a different run (optim.lr: 0.001 (saved) vs 0.0005 (now))" in line and "--allow-change" in line
    assert (run / "config.json").read_text() == saved and not (run / "history.jsonl").exists()

    res = _resume(run, "train.max_steps=8", "optim.lr=0.0005", "optim.grad_clip=1.0", "--allow-change", "optim.lr")
    assert res.exit_code == 1 and "optim.grad_clip: None (saved) vs 1.0 (now)" in res.output   # not allowed: refused
    assert "optim.lr" not in _last_line(res.output).split("different run")[1]

    res = _resume(run, "train.max_steps=8", "optim.lr=0.0005", "optim.grad_clip=1.0",
                  "--allow-change", "optim.lr", "--allow-change", "optim.grad_clip")
    assert res.exit_code == 0 and "finished at step 8" in res.output, res.output[-3000:]
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [(h["step"], h["key"], h["old"], h["new"]) for h in history] == [
        (6, "optim.grad_clip", None, 1.0), (6, "optim.lr", 0.001, 0.0005)]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", h["time"]) for h in history)
    saved = json.loads((run / "config.json").read_text())
    assert saved["optim"]["lr"] == 0.0005 and saved["optim"]["grad_clip"] == 1.0
    assert [(m["step"], m["lr"]) for m in ft.read_metrics(run)][5:] == [(6, 0.001), (7, 0.0005), (8, 0.0005)]
    again = _resume(run, "train.max_steps=9")           # the changed config is now the run's
    assert again.exit_code == 0 and len((run / "history.jsonl").read_text().splitlines()) == 2, again.output


def test_allow_change_of_an_unknown_key_is_refused(six_steps):
    res = _resume(six_steps, "--allow-change", "optim.lrr")
    assert res.exit_code == 1
    assert _last_line(res.output) == "Error: --allow-change optim.lrr: no such config key (a dotted key such as optim.lr)"


def test_nan_message_names_allow_change(tmp_path):
    from jit_core.training import NonFiniteLossError
    with pytest.raises(NonFiniteLossError) as err:
        ft.train_in_process(ft.folder_config(4), tmp_path / "run", extra_plugins=[ft.NaNPlugin({3})])
    assert f"jit train --resume {tmp_path / 'run'} optim.lr=<lower> --allow-change optim.lr" in str(err.value)


@pytest.mark.parametrize("content", ["empty", "config-only"])
def test_resume_without_a_checkpoint_says_so(tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    if content == "config-only":
        (run / "config.json").write_text(ft.folder_config(2).to_json())
    res = CliRunner().invoke(jit_cli.cli, ["train", "--resume", str(run)])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert res.output.strip() == (f"Error: --resume {run}: no checkpoint to resume from (nothing in "
                                  f"{run / 'checkpoints'}); start a run there with jit train --run-dir")
